"""Records: the metadata table's schema and store, resume decisions over what earlier runs recorded,
the report, and the grouping of row errors.

May import: the leaves (errors, files, htmlsafe, config, audio) and storage. No Ray, no torch, no model.
"""
