"""sam3d: promptable 3D tumour segmentation with Segment Anything adapted to volumes."""

__version__ = "0.1.0"
