-- The S-CSCF's registrations (TS 24.229 §5.4.1), so that a restarted S-CSCF, or another one
-- on the same PostgreSQL, knows who is registered where. One row per registered public
-- identity (with the User-Data the HSS sent and the implicit registration set derived from
-- it), and one row per contact bound to it. Times are Unix milliseconds; lists are
-- newline-separated (a SIP URI or header value never holds a raw newline).

CREATE TABLE scscf_registration (
    impu            TEXT PRIMARY KEY,          -- the registered public identity (To)
    impi            TEXT NOT NULL,             -- the private identity that registered it
    scscf_name      TEXT NOT NULL,             -- Server-Name of the S-CSCF holding it
    user_data       TEXT NOT NULL DEFAULT '',  -- IMSSubscription XML from the SAA or a PPR
    associated_uris TEXT NOT NULL DEFAULT ''   -- P-Associated-URI list, newline-separated
);
CREATE INDEX scscf_registration_impi ON scscf_registration(impi);
CREATE INDEX scscf_registration_scscf ON scscf_registration(scscf_name);

CREATE TABLE scscf_binding (
    impu        TEXT NOT NULL,                 -- scscf_registration.impu
    contact_uri TEXT NOT NULL,                 -- the Contact URI (the binding's key)
    contact     TEXT NOT NULL,                 -- the whole Contact value, without expires
    path        TEXT NOT NULL DEFAULT '',      -- Path values in order, newline-separated
    call_id     TEXT NOT NULL,
    cseq        BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,               -- Unix time in milliseconds
    PRIMARY KEY (impu, contact_uri)
);
CREATE INDEX scscf_binding_expires ON scscf_binding(expires_at);
