"""
The chaos soak's parts (bench/soak.py runs them): ``schedule`` (every
operation, from the seed alone), ``cluster`` (the applications, deployment
files, flocker-deploy runs), ``clients`` (the writers and their history),
``nemesis`` (the faults), ``observe`` (what is read off the lab),
``checker`` (the promises, as pure functions) and ``run`` (one soak).
"""
