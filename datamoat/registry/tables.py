"""The registry's own tables, and the names they allow. `Registry` (with
`TokenStore`) is their only writer; other modules call its methods.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["ROLES", "SUPPRESS_MODES", "ALL_ALIASES", "POLICY_FIELDS", "meta"]

ROLES = ("predict", "admin", "review", "monitor")  # monitor: /metrics and /v1/model only
SUPPRESS_MODES = ("abstain", "renormalize")
ALL_ALIASES = "*"
# What a review policy may hold: the thresholds serving applies, and where they came from.
POLICY_FIELDS = ("threshold", "per_class", "method", "target_accuracy", "delta", "source")

meta = sa.MetaData()

versions = sa.Table(
    "reg_versions",
    meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # fp32 | int8
    sa.Column("onnx_sha", sa.String(64), nullable=False),
    sa.Column("info", sa.Text, nullable=False),  # JSON: classes, preprocess, lineage, metrics, policy
)
blobs = sa.Table(
    "reg_blobs",
    meta,
    sa.Column("sha", sa.String(64), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
aliases = sa.Table(
    "reg_aliases",
    meta,
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("version_id", sa.String(32), nullable=False),
    sa.Column("history", sa.Text, nullable=False),  # JSON list of previous holders, newest last
    sa.Column("updated", sa.Float, nullable=False),
)
takedowns = sa.Table(
    "reg_takedowns",
    meta,
    sa.Column("version_id", sa.String(32), primary_key=True),
    sa.Column("fallback_id", sa.String(32)),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
suppressions = sa.Table(
    "reg_suppressions",
    meta,
    sa.Column("label", sa.String(200), primary_key=True),
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
policies = sa.Table(
    "reg_policies",
    meta,  # a version's info is immutable (it hashes into the id): its policy lives here
    sa.Column("version_id", sa.String(32), primary_key=True),
    sa.Column("policy", sa.Text, nullable=False),  # JSON, see `Registry.set_policy`
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
audit = sa.Table(
    "reg_audit",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(50), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("chain", sa.String(64)),  # sha256(previous row's chain + this row): see append_chained
)
state = sa.Table(
    "reg_state",
    meta,
    sa.Column("key", sa.String(50), primary_key=True),
    sa.Column("value", sa.Integer, nullable=False),
)
servers = sa.Table(
    "reg_servers",
    meta,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("url", sa.String(300), nullable=False),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("acked_generation", sa.Integer, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
)
profiles = sa.Table(
    "reg_profiles",
    meta,
    sa.Column("version_id", sa.String(32), primary_key=True),
    sa.Column("dataset_id", sa.String(64), nullable=False),
    sa.Column("profile", sa.Text, nullable=False),  # JSON: datamoat.evaluate.drift's reference profile
    sa.Column("created", sa.Float, nullable=False),
)
drift_windows = sa.Table(
    "reg_drift_windows",
    meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("server_id", sa.String(200), nullable=False),
    sa.Column("alias", sa.String(100), nullable=False),
    sa.Column("version_id", sa.String(32), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("alarm", sa.Boolean, nullable=False),
    sa.Column("result", sa.Text, nullable=False),  # JSON: fired tests, p-values, shifts, accuracy estimate
)
releases = sa.Table(
    "reg_releases",
    meta,
    sa.Column("alias", sa.String(100), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),  # canary | shadow: at most one of each per alias
    sa.Column("version_id", sa.String(32), nullable=False),
    sa.Column("percent", sa.Float, nullable=False),  # canary: share of requests; shadow: 100 (every request)
    sa.Column("route_key", sa.String(16), nullable=False),  # canary: request | client
    sa.Column("rules", sa.Text, nullable=False),  # JSON: datamoat.evaluate.compare.ReleaseRules, or {} for none
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)
webhooks = sa.Table(
    "reg_webhooks",
    meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("url", sa.String(500), nullable=False),
    sa.Column("secret", sa.String(200), nullable=False),  # signs deliveries: the registry database is the owner's
    sa.Column("events", sa.Text, nullable=False),  # JSON list; empty: every event
    sa.Column("created", sa.Float, nullable=False),
)
tokens = sa.Table(
    "reg_tokens",
    meta,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)
