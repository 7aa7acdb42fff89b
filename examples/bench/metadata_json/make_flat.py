"""A copy of an exported ekd file whose metadata is flat string entries (one per key),
nested values as JSON text: what a flat layout would store."""
import json, sys, torch
src, dst = sys.argv[1], sys.argv[2]
extra = {"ekd.json": ""}
m = torch.jit.load(src, _extra_files=extra)
meta = json.loads(extra["ekd.json"])
flat = {f"ekd.{k}": (" ".join(map(str, v)) if isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v)
                     else json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in meta.items()}
torch.jit.save(m, dst, _extra_files=flat)
print(" ".join(flat))
