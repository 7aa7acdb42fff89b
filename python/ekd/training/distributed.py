"""Training on several processes: `torchrun --nproc_per_node K -m ekd.train run.toml`.

`Context` is one process's view of a torchrun launch (rank, world size, the process group:
gloo on CPU, NCCL with device = "cuda" — written but untested, no GPU was available) and
its failure handling:

- collectives that carry a failure flag (`exchange`, `agree`): a rank whose work raised joins
  the next collective with its error instead of its values, and every rank then raises
  `RankFailed` naming it, so all ranks stop together and cleanly;
- a failure key in the rendezvous store (`post_failure`): a rank that fails outside such a
  collective posts its message before exiting; ranks waiting on the store (`wait_for_all`,
  used where ranks may wait long: labels, models spread over ranks) or between epochs
  (`raise_if_peer_failed`) stop with that message, and ranks stuck in a collective see their
  peer's connection close (torchrun also ends the remaining workers).

`DistributedTrainer` is `Trainer` on several ranks with DistributedDataParallel. Every rank
draws the same permutation of the training set for epoch k (seeded by (seed, k)) and takes
its part of every global batch of `batch_size` conformations: a contiguous slice when it
holds all the data, the members it holds when the data are sharded. The loss (RMSE + MAE
terms) is not a mean over conformations, so averaging per-rank losses would not give the
one-process gradient; instead every rank computes sums (squared errors, absolute errors,
counts), the sums are all-reduced, and each rank back-propagates a surrogate whose gradient,
summed over ranks, is exactly the gradient of the loss of the whole global batch. K processes
therefore reproduce one process up to the order of float summation, however the global batch
is divided (even unevenly, or with an empty part). Validation reduces the same sums per
evaluation batch. Only rank 0 writes checkpoints and metrics; all ranks resume from rank 0's
checkpoint.
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
import sys
import time
import traceback
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..data.sharded import Holding
from ..errors import EkdError
from ..models import predict
from ..models.potential import WithUncertainty, has_uncertainty
from .losses import SPREAD_FLOOR, entry_weights, hierarchicality, row_weights, total_loss
from .floor import shortest_pair_distances
from .loop import Trainer

TERM_NAMES = ("energy", "forces", "atom_energy", "uncertainty")
N_STATISTICS = 3 * len(TERM_NAMES) + 2   # (Σd², Σ|d|, n) per term; (Σ hierarchicality, conformations)
TIMEOUT = datetime.timedelta(minutes=30)  # collectives (lockstep); long waits use the store instead


class RankFailed(EkdError):
    """Raised on every rank when one rank of a distributed run failed."""

    def __init__(self, rank: int, message: str) -> None:
        self.rank, self.message = rank, message
        super().__init__(f"rank {rank} failed: {message}")


def describe_error(err: BaseException) -> str:
    return str(err) if isinstance(err, EkdError) else f"{type(err).__name__}: {err}"


def lost_contact(err: BaseException) -> bool:
    """Whether `err` says a peer process vanished (a collective lost its connection)."""
    text = str(err)
    return isinstance(err, getattr(dist, "DistNetworkError", ())) or any(
        sign in text for sign in ("Connection reset by peer", "Connection closed by peer", "Broken pipe"))


class Context:
    """One process of a torchrun launch."""

    def __init__(self, rank: int, world_size: int, local_rank: int, local_world_size: int, device: torch.device,
                 store: Any) -> None:
        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.device, self.store = device, store
        self._waits = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- collectives that carry failures ------------------------------------------------------
    def exchange(self, values: Optional[torch.Tensor], error: Optional[BaseException] = None) -> torch.Tensor:
        """Sum `values` over the ranks; every rank must pass the same length, also a rank that
        passes the error its work raised (then its values are ignored and every rank raises
        RankFailed naming the first failed rank)."""
        n = 0 if values is None else values.numel()
        buffer = torch.zeros(n + self.world_size, dtype=torch.float64, device=self.device)
        if error is None and values is not None:
            buffer[:n] = values.detach().reshape(-1).to(device=self.device, dtype=torch.float64)
        if error is not None:
            buffer[n + self.rank] = 1.0
        dist.all_reduce(buffer)
        failed = torch.nonzero(buffer[n:]).flatten().tolist()
        if failed:
            messages: List[Optional[str]] = [None] * self.world_size
            dist.all_gather_object(messages, describe_error(error) if error is not None else "")
            raise RankFailed(int(failed[0]), str(messages[int(failed[0])])) from error
        return buffer[:n].cpu()

    def agree(self, error: Optional[BaseException] = None) -> None:
        """A barrier that fails on every rank if `error` is given on any."""
        self.exchange(None, error)

    def minimum(self, value: np.ndarray) -> np.ndarray:
        """The elementwise minimum of every rank's `value`."""
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float64), device=self.device).clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return tensor.cpu().numpy()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def part(self, ids: torch.Tensor, holding: Holding) -> torch.Tensor:
        """This rank's part of the global batch `ids`, as indices into the data it holds."""
        if holding.full:
            n = len(ids)
            return ids[n * self.rank // self.world_size:n * (self.rank + 1) // self.world_size]
        mine = (ids >= holding.start) & (ids < holding.stop)
        return ids[mine] - holding.start

    # ---- the store: failures anywhere, long waits ----------------------------------------------
    def post_failure(self, message: str) -> None:
        """Tell the other ranks this rank failed (the first failure posted is kept)."""
        try:
            if self.store.add("failures", 1) == 1:
                self.store.set("failure", f"{self.rank}\n{message}")
        except Exception:  # the store may be gone already; the exit code still tells torchrun
            pass

    def posted_failure(self) -> Optional[Tuple[int, str]]:
        try:
            if not self.store.check(["failure"]):
                return None
            rank, message = self.store.get("failure").decode().split("\n", 1)
            return int(rank), message
        except Exception:
            return None

    def raise_if_peer_failed(self) -> None:
        posted = self.posted_failure()
        if posted is not None and posted[0] != self.rank:
            raise RankFailed(*posted)

    def wait_for_all(self, what: str) -> None:
        """Wait until every rank has got here (without a timeout: some may train for hours),
        stopping if another rank posts a failure meanwhile."""
        self._waits += 1
        key = f"wait/{self._waits}/{what}"
        self.store.add(key, 1)
        pause = 0.01
        while self.store.add(key, 0) < self.world_size:
            self.raise_if_peer_failed()
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        self.raise_if_peer_failed()

    # ---- ending ----------------------------------------------------------------------------------
    def report(self, err: BaseException) -> int:
        """Print what ended this rank, naming the rank at fault, and tell the other ranks;
        returns the exit code."""
        kept = "Finished work is kept (each model's last complete checkpoint, label blocks)"
        if isinstance(err, RankFailed):
            rank, message, cause = err.rank, err.message, err.__cause__
        else:
            posted = self.posted_failure()
            if posted is not None and posted[0] != self.rank:  # a consequence of another rank's failure
                rank, message, cause = posted[0], posted[1], None
            else:
                rank, message, cause = self.rank, describe_error(err), err
        if rank != self.rank:
            if self.is_main:
                print(f"error: the run stopped on all {self.world_size} ranks because rank {rank} failed: {message}\n"
                      f"{kept}: remove the cause and continue with --resume.", file=sys.stderr, flush=True)
            return 1
        if isinstance(cause, KeyboardInterrupt):
            self.post_failure("interrupted")
            if self.is_main:
                print("\ninterrupted; continue with --resume", file=sys.stderr, flush=True)
            return 130
        if cause is err and lost_contact(err):
            print(f"error: rank {rank} lost contact with another rank, which ended without a message (killed? out "
                  f"of memory? torchrun's report names it): {str(err).splitlines()[0][:160]}\n{kept}: continue "
                  "with --resume.", file=sys.stderr, flush=True)
            return 1
        self.post_failure(message)
        if cause is not None and not isinstance(cause, EkdError):
            traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
        print(f"error: rank {rank} failed: {message}\nThe run stops on all {self.world_size} ranks. {kept}: remove "
              "the cause and continue with --resume.", file=sys.stderr, flush=True)
        return 2 if isinstance(cause, EkdError) else 1

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def from_environment(device: str) -> Optional[Context]:
    """The Context of this process when torchrun started several (WORLD_SIZE > 1), else None.
    device "cuda" uses NCCL and GPU LOCAL_RANK (untested: no GPU was available)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise EkdError("[run] device = 'cuda' but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        backend, where = "nccl", torch.device("cuda", local_rank)
    else:
        backend, where = "gloo", torch.device("cpu")
    store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=TIMEOUT))
    dist.init_process_group(backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=world_size,
                            timeout=TIMEOUT)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return Context(rank, world_size, local_rank, local_world_size, where, dist.PrefixStore(f"ekd/{attempt}", store))


# ---- the loss from sums over ranks ------------------------------------------------------------------

def loss_statistics(prediction: Any, batch: Any, config: Any, zeroth_order: Optional[torch.Tensor]) -> torch.Tensor:
    """(N_STATISTICS,) sums over this batch from which the loss of any union of batches
    follows: per term Σd², Σ|d| and the number of labelled entries; the hierarchicality summed
    over conformations and their number. Keeps the autograd graph."""
    weights = _term_weights(config)
    predicted = {"energy": prediction.energy, "forces": prediction.forces, "atom_energy": prediction.atom_energy,
                 "uncertainty": None if prediction.uncertainty is None else torch.log(prediction.uncertainty)}
    zero = prediction.energy.sum() * 0.0
    stats = []
    for name in TERM_NAMES:
        value = predicted[name]
        if weights[name] > 0 and value is not None and name in batch.targets:
            target = batch.targets[name]
            if name == "uncertainty":  # in log space, as losses.log_ratio_loss
                target = torch.log(target.clamp_min(SPREAD_FLOOR))
            mask = torch.isfinite(target)
            diff = value[mask] - target[mask]
            row_weight = row_weights(batch, per_atom=name != "energy")
            if row_weight is None:
                stats += [diff.square().sum(), diff.abs().sum(), mask.sum().to(zero.dtype)]
            else:  # weighted sums; the "count" is Σw, as in losses.rmse_plus_mae
                w = entry_weights(row_weight, target)[mask].to(zero.dtype)
                stats += [(w * diff.square()).sum(), (w * diff.abs()).sum(), w.sum()]
        else:
            stats += [zero, zero, zero]
    if (config.hierarchicality > 0 and prediction.terms.shape[1] > 1 and zeroth_order is not None
            and batch.n_conformations):
        mean = hierarchicality(prediction.terms, batch.conformation, batch.n_conformations, zeroth_order)
        stats += [mean * batch.n_conformations, zero + batch.n_conformations]
    else:
        stats += [zero, zero]
    return torch.stack([s.to(zero.dtype) for s in stats])


def _term_weights(config: Any) -> Dict[str, float]:
    return {"energy": config.energy_weight, "forces": config.forces_weight,
            "atom_energy": config.atom_energy_weight, "uncertainty": config.uncertainty_weight}


def terms_from_statistics(stats: torch.Tensor) -> Dict[str, float]:
    """The loss terms (as `ekd.training.losses.loss_terms` gives them) of summed statistics."""
    values = stats.tolist()
    terms: Dict[str, float] = {}
    for k, name in enumerate(TERM_NAMES):
        squares, absolute, count = values[3 * k:3 * k + 3]
        if count > 0:
            terms[name] = math.sqrt(squares / count) + absolute / count
    if values[-1] > 0:
        terms["hierarchicality"] = values[-2] / values[-1]
    return terms


def surrogate_loss(local: torch.Tensor, total: torch.Tensor, config: Any) -> torch.Tensor:
    """A loss of this rank's statistics whose gradient, summed over ranks, is the gradient of
    the loss of the global batch: d(√(S/n) + A/n) = dS / (2n√(S/n)) + dA / n, with S, A, n the
    global sums (constants here) and dS, dA the sum of every rank's contribution."""
    weights = _term_weights(config)
    values = total.tolist()
    loss = local.sum() * 0.0
    for k, name in enumerate(TERM_NAMES):
        squares, _, count = values[3 * k:3 * k + 3]
        if count > 0:
            rmse = math.sqrt(squares / count)
            if rmse > 0:
                loss = loss + weights[name] / (2.0 * count * rmse) * local[3 * k]
            loss = loss + weights[name] / count * local[3 * k + 1]
    if values[-1] > 0:
        loss = loss + config.hierarchicality / values[-1] * local[-2]
    return loss


class DistributedTrainer(Trainer):
    """`Trainer` on every rank of a torchrun launch, with DistributedDataParallel."""

    def __init__(self, *args: Any, context: Context, holding: Holding, **kwargs: Any) -> None:
        self.context, self.holding = context, holding
        self._pending: Optional[BaseException] = None
        super().__init__(*args, **kwargs)
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel
        # buffers are constants of the architecture: synchronised once at construction, not every step
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                          inspect.signature(ddp.__init__).parameters else {"broadcast_buffers": False})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*")
            # DDP hooks `forward` only: a model whose head is trained runs forward_with_uncertainty as
            # its forward (WithUncertainty); a head that is not trained is an unused parameter
            head = has_uncertainty(self.model)
            module = WithUncertainty(self.model) if head and self.needs_uncertainty else self.model
            self.ddp = ddp(module, device_ids=device_ids, find_unused_parameters=head and not self.needs_uncertainty,
                           **no_buffer_sync)

    def _shortest_pair_distances(self) -> np.ndarray:
        ids = self.context.part(torch.as_tensor(self.train_ids, dtype=torch.long), self.holding)
        value, error = np.full((self.model.n_species, self.model.n_species), np.inf), None
        try:
            value = shortest_pair_distances(self.graph, ids, self.model.n_species)
        except Exception as err:
            error = err
        self.context.agree(error)
        return self.context.minimum(value)

    def _saved_state(self) -> Optional[Dict[str, Any]]:
        state, error = None, None
        if self.context.is_main:
            try:
                state = super()._saved_state()
            except Exception as err:
                error = err
        self.context.agree(error)
        return self.context.broadcast(state)

    def _save(self) -> None:
        if self.context.is_main:
            try:
                super()._save()
            except Exception as err:  # told to the other ranks at the next exchange
                self._pending = err

    def _should_stop(self) -> str:
        """Every rank decides on rank 0's clock, so all stop at the same epoch."""
        error, self._pending = self._pending, None
        clock = torch.tensor([self.elapsed if self.context.is_main else 0.0])
        self.elapsed = float(self.context.exchange(clock, error)[0])
        return super()._should_stop()

    def _local_statistics(self, ids: torch.Tensor) -> torch.Tensor:
        """Loss statistics of this rank's part of a training batch (with the autograd graph)."""
        batch = self.graph.batch(ids)
        prediction = predict(self.ddp, batch, forces=self.needs_forces, create_graph=self.needs_forces,
                             uncertainty=self.needs_uncertainty)
        return loss_statistics(prediction, batch, self.config, self._zeroth_order(batch))

    def _train_epoch(self) -> Dict[str, float]:
        self.model.train()
        order = torch.as_tensor(self.train_ids, dtype=torch.long)
        order = order[torch.randperm(len(order), generator=self._epoch_generator())]
        sums: Dict[str, float] = {}
        n_batches = 0
        for start in range(0, len(order), self.config.batch_size):
            local, error = None, None
            try:
                local = self._local_statistics(self.context.part(order[start:start + self.config.batch_size],
                                                                 self.holding))
            except Exception as err:
                error = err
            total = self.context.exchange(local if local is not None else torch.zeros(N_STATISTICS), error)
            terms = terms_from_statistics(total)
            loss = float(total_loss(terms, self.config))  # type: ignore[arg-type]
            if not math.isfinite(loss):
                raise EkdError(f"{self.name}: the training loss became {loss} at epoch {self.epoch}; "
                               "lower the learning rate or check the data for outliers")
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # DDP's notice that (1, n) gradients have other strides: harmless
                warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
                (surrogate_loss(local, total, self.config) * self.context.world_size).backward()  # DDP averages
            if self.config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            n_batches += 1
            for key, value in {"loss": loss, **terms}.items():
                sums[key] = sums.get(key, 0.0) + value
        return {k: v / max(n_batches, 1) for k, v in sums.items()}

    def validation_loss(self) -> Dict[str, float]:
        """The one-process validation loss (per evaluation batch, weighted by its size), each
        evaluation batch split over the ranks and its statistics reduced."""
        self.model.eval()
        ids = torch.as_tensor(self.val_ids, dtype=torch.long)
        size = self.config.eval_batch_size
        chunks = [ids[s:s + size] for s in range(0, len(ids), size)]
        rows = torch.zeros(len(chunks), N_STATISTICS, dtype=torch.float64)
        error = None
        try:
            for j, chunk in enumerate(chunks):
                batch = self.graph.batch(self.context.part(chunk, self.holding))
                with torch.set_grad_enabled(self.needs_forces):
                    prediction = predict(self.model, batch, forces=self.needs_forces, uncertainty=self.needs_uncertainty)
                rows[j] = loss_statistics(prediction, batch, self.config, None).detach().double().cpu()
        except Exception as err:
            error = err
        totals = self.context.exchange(rows.reshape(-1), error).reshape(len(chunks), N_STATISTICS)
        sums: Dict[str, float] = {}
        for chunk, row in zip(chunks, totals):
            terms: Dict[str, Any] = terms_from_statistics(row)
            # as Trainer.validation_loss: the uncertainty head never decides the best epoch
            terms["loss"] = float(total_loss({k: v for k, v in terms.items() if k != "uncertainty"}, self.config))
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value * len(chunk)
        return {k: v / max(len(ids), 1) for k, v in sums.items()}

    def run(self, resume: bool = True):  # type: ignore[override]
        result = super().run(resume)
        error, self._pending = self._pending, None
        self.context.agree(error)  # rank 0's last checkpoint is written (or its failure known)
        return result
