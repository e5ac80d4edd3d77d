"""The core layer: dtypes, hyperparameters, every check on arguments, GPU interop and the
8-bit format. It imports nothing else of fastadam; everything above builds on it."""



