"""Front doors besides the job: ``dia-say`` (one script to one file) and ``dia-audition`` (a local web
page to try scripts and voices).

May import: everything but the driver (they run without Ray), and ``dia_model``'s public names.
"""
