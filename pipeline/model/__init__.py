"""The model boundary: the only sub-package that imports ``dia_model`` (apps/ aside). Loading (Dia,
the tiny random model, the null model), the driver's Hub checks, the script checks made before any
model loads, and the ``SpeechModel`` protocol that both ``Dia`` and ``NullModel`` meet.

May import: the leaves, storage, records, quality, and ``dia_model``'s public names.
"""
