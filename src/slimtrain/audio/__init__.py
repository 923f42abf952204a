"""Audio: :mod:`.frontend` (``MelFrontend``, a log-mel front end whose bands are a width), :mod:`.io`
(reading, resampling, streaming resampler, input checks) and :mod:`.data` (users' corpora: RTTM folders,
CSV manifests, ASVspoof protocols, noise mixing, skip reports)."""
