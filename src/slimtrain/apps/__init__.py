"""The shipped models: :mod:`.vad` (``slimtrain.vad``: load, predict, stream), :mod:`.spoof`
(``slimtrain.spoof``: load, score) and :mod:`.shipped` (their on-disk format). The model families they are
built from live here too (:mod:`.vad.models`, :mod:`.spoof.models`), so that loading a shipped model needs
no study code."""
