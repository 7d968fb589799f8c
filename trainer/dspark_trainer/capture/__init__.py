"""Hidden-state capture: the reference server on transformers (engine, HTTP server, metrics) and the
SGLang plugin. Submodules are imported where used; importing this package pulls in nothing heavy."""
