"""Running a study's tasks: each a `python -m ekd.train` subprocess with its own log, a few at
once; finished runs are kept and unfinished ones resume."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

from ..config import config_to_toml
from ..fileio import atomic_write_text
from ..run_layout import RunLayout
from .plan import Task


def finished(run_dir: Path) -> bool:
    return RunLayout(run_dir).summary_json.exists()


def run_task(task: Task, out: Path) -> bool:
    """One `python -m ekd.train` in a subprocess (fresh memory and threads), output to its log."""
    run_dir, log = out / task.name, out / "logs" / f"{task.name}.log"
    config_path = out / "configs" / f"{task.name}.toml"
    atomic_write_text(config_path, config_to_toml(task.config))
    command = [sys.executable, "-m", "ekd.train", str(config_path), "--out", str(run_dir), "--quiet"]
    if run_dir.exists():
        command.append("--resume")
    elif task.after is not None:
        command += ["--teachers-from", str(out / task.after)]  # its finished teachers and labels are kept
    with open(log, "a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        code = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode
    return code == 0 and finished(run_dir)


def run_all(tasks: List[Task], out: Path, jobs: int, say) -> None:
    """Run the tasks on `jobs` workers; a variant starts once its seed's teachers exist."""
    lock, wake = threading.Lock(), threading.Condition()
    by_name = {t.name: t for t in tasks}
    for task in tasks:
        if finished(out / task.name):
            task.state = "done"
    total, started = len(tasks), time.perf_counter()

    def next_task() -> Optional[Task]:
        with wake:
            while True:
                # main runs first: each unlocks its variants, so the workers stay busy to the end
                pending = sorted((t for t in tasks if t.state == "pending"), key=lambda t: t.after is not None)
                if not pending:
                    return None
                for task in pending:
                    before = by_name.get(task.after) if task.after else None
                    if before is not None and before.state == "failed":
                        task.state = "failed"
                        say(f"{task.name}: skipped ({before.name} failed)")
                    elif before is None or before.state == "done":
                        task.state = "running"
                        return task
                if all(t.state != "pending" for t in tasks):
                    return None
                wake.wait()

    def worker() -> None:
        while (task := next_task()) is not None:
            begin = time.perf_counter()
            ok = run_task(task, out)
            with wake:
                task.state, task.seconds = ("done" if ok else "failed"), time.perf_counter() - begin
                done = sum(t.state in ("done", "failed") for t in tasks)
                wake.notify_all()
            with lock:
                what = "done" if ok else f"FAILED (see {out / 'logs' / (task.name + '.log')})"
                say(f"[{done}/{total}] {task.name}: {what} in {task.seconds / 60:.1f} min "
                    f"(study {(time.perf_counter() - started) / 60:.1f} min)")

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
