# Run once in session 18 (2026-12-03) on benchmark caches; kept for the record, not a user command.
"""One-off (session 18): cells now record the shipped model they started from (``settings.init``) and the SHA-256
of its weights (``starting_model_sha256``); ``benchmarks/run.py`` recomputes a cell whose hash is not the one
``general`` names in the checkout. Cells made before say neither: this stamps them with the weights they were
made from (given: ``general-v1.pt`` for the main cache; the candidate's file for a cache it was measured in), the
starting point read from each cell's own ``train_result.json``.

    python benchmarks/migrations/2026_12_03_stamp_starting_model.py CACHE WEIGHTS.pt
"""
import hashlib
import json
import sys
from pathlib import Path

SHIPPED_NAMES = ("general", "general-v1")


def stamp(cache: Path, weights: Path) -> int:
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    stamped = 0
    for path in sorted(cache.glob("*/cells/*/*/*.json")):
        profile, _, structure, dose = path.parts[-5:-1]
        record = json.loads(path.read_text())
        settings = record.get("settings")
        if not settings or "starting_model_sha256" in record:
            continue
        if "init" not in settings and "model" not in settings:
            train_result = cache / profile / "work" / structure / dose / path.stem / "train_result.json"
            if not train_result.exists():
                continue  # not a cryojoint training cell (a peer, a floor)
            settings["init"] = json.loads(train_result.read_text()).get("meta", {}).get("init")
        if (settings.get("init") or settings.get("model")) in SHIPPED_NAMES:
            record["starting_model_sha256"] = digest
            record["migrated_starting_model"] = f"session 18: stamped as made from {weights.name}"
            stamped += 1
        path.write_text(json.dumps(record, indent=1, default=str))
    return stamped


if __name__ == "__main__":
    print(stamp(Path(sys.argv[1]), Path(sys.argv[2])), "cells stamped")
