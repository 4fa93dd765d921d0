"""File formats at the boundary: MRC images and particle coordinate tables."""

from cryojoint.io.coords import read_coordinates, write_coordinates
from cryojoint.io.mrc import Micrograph, micrograph_name, read_micrograph, read_movie, write_mrc

__all__ = [
    "Micrograph",
    "micrograph_name",
    "read_coordinates",
    "read_micrograph",
    "read_movie",
    "write_coordinates",
    "write_mrc",
]
