"""Streaming microstructure features of one symbol (pure numpy; no torch, Bytewax or Kafka here).

- :mod:`.state`: ``FeatureParams``, ``SymbolFeatures`` (the per-key dataflow state), ``BarFeatures``, ``replay``;
- :mod:`.batch`: the vectorised batch reference (test oracle), ``Ticks``, ``window_features``;
- estimators: :mod:`.realized` (RV, TSRV, BPV, jump z), :mod:`.liquidity` (Amihud), :mod:`.spreads`,
  :mod:`.volume_profile`, :mod:`.pattern` (128-d pattern and outcome), :mod:`.ssr_luld` (SSR/LULD state);
- :mod:`.normalize`: ``FeatureNormalizer`` for the 20-d regime vector; :mod:`.types`: ``Pattern``, the library
  entry (the layout itself is :mod:`schemas.layout`).

Submodules are imported explicitly (nothing is re-exported here) so that importing the shared types stays
cheap.
"""
