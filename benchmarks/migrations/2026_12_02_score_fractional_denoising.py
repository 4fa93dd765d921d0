# Run once in session 15 (2026-12-02) on the benchmark cache; kept for the record, not a user command.
"""One-off (session 15): denoised images at a fractional bin (models fine-tuned from the general model) are scored now
(scoring._to_scale resamples them back to full size). Cached cells that had left denoising unscored are scored from
their saved denoised micrographs; nothing is retrained."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.suite.datasets import load_dose_data  # noqa: E402
from benchmarks.suite.profiles import PROFILES  # noqa: E402
from benchmarks.suite.scoring import _read_mrc_folder, score_denoised  # noqa: E402

C = Path(__file__).resolve().parents[1] / ".cache"
for path in sorted(C.glob("*/cells/*/*/*.json")):
    record = json.loads(path.read_text())
    if "denoising_not_scored" not in record or path.parts[-5] not in PROFILES:
        continue
    profile, dose = PROFILES[path.parts[-5]], path.parts[-2]
    data = load_dose_data(C / "data" / record["dataset"], dose, profile)
    denoised = C / path.parts[-5] / "work" / path.parts[-3] / dose / path.stem / "pred" / "denoised"
    record["denoising"] = score_denoised(data, _read_mrc_folder(denoised, data.test_names))
    record["denoising_scored_later"] = f"session 15 (was: {record.pop('denoising_not_scored')})"
    path.write_text(json.dumps(record, indent=1, default=str))
    print(path.relative_to(C), "FRC", round(record["denoising"]["frc_clean"], 3))
