"""Records: the schema and its validation, intake of raw input, record files, coreness labels, record versions."""
