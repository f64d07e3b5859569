"""`actionlab bench`: side-by-side measurements of models (`model`), data reading (`data`), the
training input pipeline (`train`) and GPU decoding (`gpu`)."""
