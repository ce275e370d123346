"""The Fine-tune dock: ``widget.FinetuneWidget`` and its sections, one module each."""
