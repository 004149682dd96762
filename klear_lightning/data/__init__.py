"""Data: sample schema, media I/O, WebDataset shards, `klear prepare` and the AVDataModule."""
