"""Fine-tune a BERT-family encoder on IMDB reviews and export a serving-ready run directory."""
