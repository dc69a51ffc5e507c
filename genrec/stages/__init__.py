"""The stages of genrec as Python functions: each takes typed objects (a data module, an
:class:`~genrec.encode.EncoderConfig`, a tokenizer and a
:class:`~genrec.quantize.stage.TokenizeConfig`, a model config's files) and returns what it made.

* :mod:`genrec.stages.data` — :func:`~genrec.stages.data.describe_data`: statistics and split sizes;
* :mod:`genrec.stages.encode` — :func:`~genrec.stages.encode.encode_stage`: item embeddings;
* :mod:`genrec.stages.tokenize` — :func:`~genrec.stages.tokenize.tokenize_stage`: semantic IDs;
* :mod:`genrec.stages.fit` — :func:`~genrec.stages.fit.build_model_run`: a model's trainer with
  its logger and checkpoints under the run folder, then ``fit`` / ``test``;
* :mod:`genrec.pipeline` and :mod:`genrec.scaling` chain them.

Each stage module also owns its parser (``data_parser()`` ...), so a YAML reads the same in the
command line (:mod:`genrec.cli`, which nothing imports) and in a Python caller
(:func:`genrec.stages.parsing.read_config`).
"""
