"""The Ray engine (``--engine ray``): the pipeline's stages as Ray Data jobs over sharded tables,
with a journal of finished shards so a stopped job resumes (``jobs``, ``shards``).

May import every layer below the server (model, evaluate, stages, backends, features, tables); ray
itself is imported inside the functions that start a job.
"""
