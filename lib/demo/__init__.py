"""Generated labelled samples for the demos and tests (video, cine-MR DICOM, GeoTIFF stacks)."""
