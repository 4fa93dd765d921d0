"""Does a general model's detector owe its batch-norm statistics to the real micrographs of its corpus?

::

    python scripts/batchnorm_statistics_check.py src/cryojoint/weights/general-v2.pt runs/v2-bn-simulated.pt 300

Re-estimates every BatchNorm layer's running mean and variance of ``MODEL`` on the simulated pretraining corpus
alone (the default ``CorpusConfig``: the same 60 micrographs, no real ones), ``BATCHES`` minibatches of the
pretraining patch size, no gradient step; prints each layer's shift (mean shift in units of the old standard
deviation, ratio of variances) and writes the model with the new statistics to ``OUT`` for the benchmark's zero-shot
rows. Session 18 on general-v2: shifts ≤ 0.011 sd, variance ratios 0.98–1.08 (docs/general-model.md).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from cryojoint.checkpoint import load_model, save_model
from cryojoint.data import PatchSampler, prepare_data
from cryojoint.pretraining import CorpusConfig, build_corpus, pretraining_config


def main(model_path: str, out: str, batches: int) -> None:
    loaded = load_model(model_path)
    network = loaded.network
    corpus = build_corpus(CorpusConfig(), progress=True)
    config = pretraining_config(corpus, steps=batches)
    prepared = prepare_data(corpus.micrographs, corpus.labels, config.data, config.loss)
    sampler = PatchSampler(prepared.train, int(loaded.meta["training_patch_px"]), config.data.labelled_centre_fraction,
                           np.random.default_rng(123))
    layers = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over the batches below
    network.train()
    with torch.no_grad():
        for _ in range(batches):
            images, _, _ = sampler.sample_with_origin(config.data.batch_size)
            network(torch.from_numpy(images), dense=True, detect=True)
    network.eval()
    for index, (layer, (mean, var, momentum)) in enumerate(zip(layers, before)):
        layer.momentum = momentum
        shift = float((layer.running_mean - mean).abs().mean() / var.sqrt().mean())
        ratio = float((layer.running_var / var).mean())
        print(f"batch norm {index}: mean shift {shift:.3f} sd, variance ratio {ratio:.3f}")
    meta = {**loaded.meta, "batchnorm_statistics": f"re-estimated on the simulated corpus alone, {batches} minibatches"}
    print(save_model(out, network, loaded.config, meta))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
