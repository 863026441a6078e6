"""`kiln build`: a checkpoint -> an engine directory (quantized weights + engine.json), and its checks."""
