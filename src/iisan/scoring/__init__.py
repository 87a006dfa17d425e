"""Scoring: what ranks items for a user once a model is trained.

A model (:mod:`iisan.models`) is what training learns: an item tower and a user encoder. A
scorer composes the model's user and item vectors with what training does not learn: the
content floor (the frozen encoders' content and the texts' words), priors for new and rare
items, weighed per group of users on the validation split (:mod:`iisan.scoring.blend`,
fitted by :mod:`iisan.scoring.calibrate`). It has its own options
(:class:`~iisan.config.ScoreConfig`) and its own files in the run folder
(:mod:`iisan.scoring.scorer`); ``iisan calibrate RUN`` fits it again without retraining.
"""
