"""LightningDataModules, readers of every on-disk format, transforms and the generated data set."""
