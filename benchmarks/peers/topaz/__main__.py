"""``python -m benchmarks.peers.topaz --selftest`` (or ``--measure``)."""

from benchmarks.peers.topaz.selftest import main

main()
