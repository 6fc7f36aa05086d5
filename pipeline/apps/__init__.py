"""Front doors besides the job: ``dia-say`` (one script to one file) and ``dia-audition`` (a local web
page to try scripts and voices).

May import: everything but the driver (they run without Ray), and ``dia_model``'s public names.
Most of their imports sit inside functions on purpose: ``--help`` answers at once, and the audition
server binds its port before the model (torch, dia_model, soundfile, Hydra) loads.
"""
