"""Pure metrics over arrays and in-memory tables: no files, no paths, no printing.

``matching``
    one-to-one matching of picks to true particles, exact precision-recall curves, AP and F1;
``picking``
    the per-micrograph and pooled picking report of coordinate tables (built on ``matching``);
``denoising``
    PSNR, Fourier ring correlation, the low-passed reference and the denoising report.

:mod:`cryojoint.evaluation` reads files and folders and calls these; the report only lays out their numbers.
"""
