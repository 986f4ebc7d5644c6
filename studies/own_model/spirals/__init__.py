"""A user's own project, as tuner sees it: a dataset, a model and a training loop that know nothing of tuner."""
