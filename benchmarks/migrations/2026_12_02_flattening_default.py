# Run once in session 11 (2026-12-02) on the benchmark cache; kept for the record, not a user command.
"""One-off (session 11): ice flattening became the default. Cells computed as 'default' before it are the
'-unflattened' row now; the '-flat' cells are the default; other default-preset rows computed unflattened are
moved aside to .cache/pre-s11 (stale under the new default, recomputed by the next run)."""
import json
import shutil
from pathlib import Path

C = Path(__file__).resolve().parents[1] / ".cache"
NOTE = ("session 11: computed as the default before ice flattening (data.background_sigma_diameters 3.0) became "
        "the default")
def move(src: Path, dst: Path):
    if src.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.exists():
            raise SystemExit(f"{dst} exists")
        shutil.move(str(src), str(dst))
def migrate(profile: str, structure: str, dose: str):
    cells = C / profile / "cells" / structure / dose
    work = C / profile / "work" / structure / dose
    if not cells.exists():
        return
    for suffix in ("", "-seed1", "-seed2"):
        old, unflat, flat = (f"cryojoint-joint-default{suffix}", f"cryojoint-joint-default-unflattened{suffix}",
                             f"cryojoint-joint-default-flat{suffix}")
        if (cells / f"{old}.json").exists():
            record = json.loads((cells / f"{old}.json").read_text())
            if record.get("settings", {}).get("overrides", {}).get("data.background_sigma_diameters") is None:
                record.setdefault("settings", {})["overrides"] = {"data.background_sigma_diameters": None}
                record["migrated"] = NOTE
                (cells / f"{unflat}.json").write_text(json.dumps(record, indent=1, default=str))
                (cells / f"{old}.json").unlink()
                move(work / old, work / unflat)
                print("unflattened:", cells / unflat)
        if (cells / f"{flat}.json").exists():
            move(cells / f"{flat}.json", cells / f"{old}.json")
            move(work / flat, work / old)
            print("default:", cells / old)
    for path in sorted(cells.glob("cryojoint-*-default*.json")):
        name = path.stem
        if name.startswith("cryojoint-joint-default") and not name.startswith("cryojoint-joint-default-bf16") \
                and not name.startswith("cryojoint-joint-default-coupled"):
            continue
        print("aside:", path)
        move(path, C / "pre-s11" / profile / "cells" / structure / dose / path.name)
        move(work / name, C / "pre-s11" / profile / "work" / structure / dose / name)
for profile, structure, doses in (("standard", "ribosome", ("010", "020", "060")), ("real-bgal", "bgal", ("real",))):
    for dose in doses:
        migrate(profile, structure, dose)
