"""The Segment dock: ``widget.SegmentWidget`` and its sections, one module each."""
