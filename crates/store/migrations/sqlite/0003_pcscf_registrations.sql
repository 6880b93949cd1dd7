-- The P-CSCF's registrations (TS 24.229 §5.2.2.4), so that a restarted P-CSCF still knows
-- how to reach the UEs registered through it: one row per UE flow (the transport and source
-- address its REGISTER came from), with the contacts it registered and their expiries, the
-- P-Associated-URI list and the Service-Route from the 200 OK, and the UE's protected server
-- port when it registered through IPsec. The SAs themselves are not kept: the kernel's are
-- removed when a P-CSCF starts, so their SPIs and keys would be of no use. Times are Unix
-- milliseconds; lists are newline-separated (a SIP URI or header value never holds a raw
-- newline), a contact line being `<expires_at> <uri>`.

CREATE TABLE pcscf_registration (
    pcscf_name      TEXT NOT NULL,             -- via_host of the P-CSCF holding it
    transport       TEXT NOT NULL,             -- the flow's transport: udp, tcp or tls
    addr            TEXT NOT NULL,             -- the flow's source address, ip:port ([v6]:port)
    impi            TEXT NOT NULL,             -- the private identity that registered
    contacts        TEXT NOT NULL,             -- `<expires_at> <uri>` lines
    associated_uris TEXT NOT NULL DEFAULT '',  -- P-Associated-URI list, newline-separated
    service_route   TEXT NOT NULL DEFAULT '',  -- Service-Route values in order, newline-separated
    ipsec_port_us   BIGINT,                    -- the UE's protected server port; NULL: no IPsec
    expires_at      BIGINT NOT NULL,           -- the latest contact expiry (Unix milliseconds)
    PRIMARY KEY (pcscf_name, transport, addr)
);
CREATE INDEX pcscf_registration_expires ON pcscf_registration(pcscf_name, expires_at);
