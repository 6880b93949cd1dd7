-- The S-CSCF's and the P-CSCF's registrations with fewer pages per write (SQLite only).
--
-- Each registration change is its own small commit, and SQLite writes every page a commit
-- touched, whole, into the WAL and later into the database file. With rowid tables, the
-- automatic index of each PRIMARY KEY and the secondary indexes, one change touched six or
-- seven pages: in the 100,000-UE soak the S-CSCF wrote 51 KB to disk per registration
-- change (33 GB in 23 minutes) and the P-CSCF 20 KB, and the disk, slowing down now and
-- then, stalled the commits that the answers wait for. Keyed WITHOUT ROWID tables hold each
-- row in their primary key's B-tree, and the indexes go: nothing queries them on SQLite
-- (the S-CSCF loads its registrations by a scan at start, and the P-CSCF's start-up delete
-- of expired rows scans its own rows by the key's first column). A change now touches the
-- leaf of its registration and that of its bindings. PostgreSQL, where several S-CSCFs
-- may share the tables, keeps its own schema and indexes.

CREATE TABLE scscf_registration_lean (
    impu            TEXT NOT NULL PRIMARY KEY,
    impi            TEXT NOT NULL,
    scscf_name      TEXT NOT NULL,
    user_data       TEXT NOT NULL DEFAULT '',
    associated_uris TEXT NOT NULL DEFAULT ''
) WITHOUT ROWID;
INSERT INTO scscf_registration_lean (impu, impi, scscf_name, user_data, associated_uris)
    SELECT impu, impi, scscf_name, user_data, associated_uris FROM scscf_registration;
DROP TABLE scscf_registration;
ALTER TABLE scscf_registration_lean RENAME TO scscf_registration;

CREATE TABLE scscf_binding_lean (
    impu        TEXT NOT NULL,
    contact_uri TEXT NOT NULL,
    contact     TEXT NOT NULL,
    path        TEXT NOT NULL DEFAULT '',
    call_id     TEXT NOT NULL,
    cseq        BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (impu, contact_uri)
) WITHOUT ROWID;
INSERT INTO scscf_binding_lean (impu, contact_uri, contact, path, call_id, cseq, expires_at)
    SELECT impu, contact_uri, contact, path, call_id, cseq, expires_at FROM scscf_binding;
DROP TABLE scscf_binding;
ALTER TABLE scscf_binding_lean RENAME TO scscf_binding;

CREATE TABLE pcscf_registration_lean (
    pcscf_name      TEXT NOT NULL,
    transport       TEXT NOT NULL,
    addr            TEXT NOT NULL,
    impi            TEXT NOT NULL,
    contacts        TEXT NOT NULL,
    associated_uris TEXT NOT NULL DEFAULT '',
    service_route   TEXT NOT NULL DEFAULT '',
    ipsec_port_us   BIGINT,
    expires_at      BIGINT NOT NULL,
    PRIMARY KEY (pcscf_name, transport, addr)
) WITHOUT ROWID;
INSERT INTO pcscf_registration_lean (pcscf_name, transport, addr, impi, contacts,
        associated_uris, service_route, ipsec_port_us, expires_at)
    SELECT pcscf_name, transport, addr, impi, contacts, associated_uris, service_route,
        ipsec_port_us, expires_at FROM pcscf_registration;
DROP TABLE pcscf_registration;
ALTER TABLE pcscf_registration_lean RENAME TO pcscf_registration;
