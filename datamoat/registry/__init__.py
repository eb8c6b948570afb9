"""The registry database: model versions, aliases, incident controls, tokens and audit,
plus the ledger of predictions, feedback and reviews that lives beside them.

- `core`: `Registry`, the versions and every control write, serialised and audited.
- `chain`: append-only, hash-chained logs.
- `schema`: the one create-or-migrate routine every table owner uses.
- `ledger`: the prediction, feedback and review tables, and the input hash.
- `register`: register a catalog model (exported to ONNX) as a version.
"""

from datamoat.registry.core import POLICY_FIELDS, ROLES, SUPPRESS_MODES, AuthError, Registry, registry_url

__all__ = ["POLICY_FIELDS", "ROLES", "SUPPRESS_MODES", "AuthError", "Registry", "registry_url"]
