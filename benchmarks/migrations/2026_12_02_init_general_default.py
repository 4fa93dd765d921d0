# Run once in session 15 (2026-12-02) on the benchmark cache; kept for the record, not a user command.
"""One-off (session 15): training starts from the shipped general model by default (train.init unset -> general for
the default preset). Cells computed as 'default' before are the '-scratch' row now; the '-finetuned' cells (train.init
general) are the default, '-finetuned-120' the '-120' row; other default-preset rows trained from scratch are moved
aside to .cache/pre-s15 (stale under the new default, recomputed by the next run that asks for them)."""
import json
import shutil
from pathlib import Path

C = Path(__file__).resolve().parents[1] / ".cache"
NOTE = "session 15: computed as the default before training started from the general model (train.init scratch)"
STALE_PREFIXES = ("cryojoint-joint-default", "cryojoint-joint-no-consistency-default", "cryojoint-sequential-default",
                  "cryojoint-denoise-only-default")  # detect-only still starts from scratch


def move(src: Path, dst: Path) -> None:
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            raise SystemExit(f"{dst} exists")
        shutil.move(str(src), str(dst))


def rename(cells: Path, work: Path, old: str, new: str) -> None:
    move(cells / f"{old}.json", cells / f"{new}.json")
    move(work / old, work / new)


def migrate(cells: Path, work: Path) -> None:
    for suffix in ("", "-seed1", "-seed2"):
        old, scratch = f"cryojoint-joint-default{suffix}", f"cryojoint-joint-default-scratch{suffix}"
        path = cells / f"{old}.json"
        if path.exists():
            record = json.loads(path.read_text())
            settings = record.setdefault("settings", {})
            overrides = settings.get("overrides") or {}
            if "train.init" not in overrides:
                settings["overrides"] = {**overrides, "train.init": "scratch"}
                record["migrated"] = NOTE
                (cells / f"{scratch}.json").write_text(json.dumps(record, indent=1, default=str))
                path.unlink()
                move(work / old, work / scratch)
                print("scratch:", cells / scratch)
        rename(cells, work, f"cryojoint-joint-default-finetuned-120{suffix}", f"cryojoint-joint-default-120{suffix}")
        rename(cells, work, f"cryojoint-joint-default-finetuned{suffix}", old)
    keep = ("cryojoint-joint-default-scratch", "cryojoint-joint-default-120")
    for path in sorted(cells.glob("cryojoint-*-default*.json")):
        name = path.stem
        base = name.split("-seed")[0]
        if base == "cryojoint-joint-default" or base in keep or not name.startswith(STALE_PREFIXES):
            continue
        print("aside:", path)
        relative = path.parent.relative_to(C)
        move(path, C / "pre-s15" / relative / path.name)
        move(work / name, C / "pre-s15" / str(relative).replace("/cells/", "/work/", 1) / name)


for dose_dir in sorted(C.glob("*/cells/*/*")):
    migrate(dose_dir, Path(str(dose_dir).replace("/cells/", "/work/", 1)))
