"""The relay's FHIR R4 facade: :mod:`.api` (routes, search, writes), :mod:`.mapping` (accord's
model as FHIR resources), :mod:`.writes` (FHIR bodies as calendar calls), :mod:`.http` (the small
HTTP server on ``--fhir-port``: websockets' HTTP side reads no request bodies)."""
