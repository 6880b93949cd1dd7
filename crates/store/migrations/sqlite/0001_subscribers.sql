-- The HSS's subscriber data (TS 29.228 / TS 23.008), one IMS subscription at a time:
-- private identities (IMPI, with their credentials and SQN), service profiles (iFC), public
-- identities (IMPU, grouped in implicit registration sets), which IMPI may use which IMPU,
-- roaming permissions, and the S-CSCF assignment. Integers are BIGINT everywhere so that both
-- backends decode them alike. Secrets: K and OPc (never OP), and the digest HA1 (never the
-- password).

CREATE TABLE capability_set (
    name         TEXT PRIMARY KEY,
    mandatory    TEXT NOT NULL DEFAULT '',   -- comma-separated Mandatory-Capability values
    optional     TEXT NOT NULL DEFAULT '',   -- comma-separated Optional-Capability values
    server_names TEXT NOT NULL DEFAULT ''    -- comma-separated preferred S-CSCF SIP URIs
);

CREATE TABLE subscription (
    id             INTEGER PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,     -- the operator's handle (e.g. the IMSI)
    capability_set TEXT REFERENCES capability_set(name),
    scscf_name     TEXT,                     -- Server-Name of the assigned S-CSCF (SIP URI)
    scscf_host     TEXT                      -- its Diameter Origin-Host, for RTR/PPR
);

CREATE TABLE private_identity (
    impi            TEXT PRIMARY KEY,
    subscription_id BIGINT NOT NULL REFERENCES subscription(id) ON DELETE CASCADE,
    auth_scheme     TEXT NOT NULL CHECK (auth_scheme IN ('aka', 'digest')),
    k               BLOB,
    opc             BLOB,
    amf             BLOB,
    sqn             BIGINT NOT NULL DEFAULT 0 CHECK (sqn >= 0 AND sqn < 281474976710656),
    digest_realm    TEXT,
    digest_ha1      TEXT,
    CHECK (auth_scheme <> 'aka' OR (k IS NOT NULL AND opc IS NOT NULL AND amf IS NOT NULL)),
    CHECK (auth_scheme <> 'digest' OR (digest_ha1 IS NOT NULL AND digest_realm IS NOT NULL))
);
CREATE INDEX private_identity_subscription ON private_identity(subscription_id);

CREATE TABLE service_profile (
    id              INTEGER PRIMARY KEY,
    subscription_id BIGINT NOT NULL REFERENCES subscription(id) ON DELETE CASCADE,
    ifc_xml         TEXT NOT NULL DEFAULT ''  -- InitialFilterCriteria elements, verbatim
);
CREATE INDEX service_profile_subscription ON service_profile(subscription_id);

CREATE TABLE public_identity (
    impu               TEXT PRIMARY KEY,
    subscription_id    BIGINT NOT NULL REFERENCES subscription(id) ON DELETE CASCADE,
    service_profile_id BIGINT NOT NULL REFERENCES service_profile(id) ON DELETE CASCADE,
    irs                BIGINT NOT NULL DEFAULT 0, -- implicit registration set, per subscription
    barred             BIGINT NOT NULL DEFAULT 0 CHECK (barred IN (0, 1)),
    identity_type      BIGINT NOT NULL DEFAULT 0, -- 0 IMPU, 1 distinct PSI, 2 wildcarded PSI
    reg_state          BIGINT NOT NULL DEFAULT 0  -- 0 not registered, 1 registered, 2 unregistered
);
CREATE INDEX public_identity_subscription ON public_identity(subscription_id);

CREATE TABLE impi_impu (
    impi TEXT NOT NULL REFERENCES private_identity(impi) ON DELETE CASCADE,
    impu TEXT NOT NULL REFERENCES public_identity(impu) ON DELETE CASCADE,
    PRIMARY KEY (impi, impu)
);
CREATE INDEX impi_impu_impu ON impi_impu(impu);

CREATE TABLE roaming_allowed (
    subscription_id BIGINT NOT NULL REFERENCES subscription(id) ON DELETE CASCADE,
    visited_network TEXT NOT NULL,
    PRIMARY KEY (subscription_id, visited_network)
);
