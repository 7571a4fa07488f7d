-- The decision policy (docs/policy.md): the vendor each request named, so that a replay decides
-- it under that vendor's policy, and pickup images' perceptual hashes.

ALTER TABLE inspection_requests ADD COLUMN vendor_id text NOT NULL DEFAULT '';

-- ListInspectionsByTime (replays over a period): newest first, keyset-paginated.
CREATE INDEX inspection_requests_created_idx
    ON inspection_requests (created_at DESC, inspection_id DESC);

-- Perceptual hashes (64-bit dHash, stored as the signed bigint with the same bits) of pickup
-- images, for the reused-photo check: a pickup photo within a small Hamming distance of a
-- pickup photo of another shipment's inspection.
--
-- The hash is split into four 16-bit bands, each indexed. Two hashes within distance d agree
-- to within floor(d / 4) bits on at least one band (pigeonhole), so a lookup probes each band's
-- index for the values within that radius of its own band and confirms the candidates with
-- bit_count: exact, and a few index probes whatever the table's size.

CREATE TABLE pickup_image_hashes (
    inspection_id uuid        NOT NULL
                  REFERENCES inspection_requests (inspection_id) ON DELETE CASCADE,
    image_index   integer     NOT NULL CHECK (image_index >= 0),
    shipping_id   text        NOT NULL,
    phash         bigint      NOT NULL,
    band0         integer     GENERATED ALWAYS AS (((phash >> 48) & 65535)::integer) STORED,
    band1         integer     GENERATED ALWAYS AS (((phash >> 32) & 65535)::integer) STORED,
    band2         integer     GENERATED ALWAYS AS (((phash >> 16) & 65535)::integer) STORED,
    band3         integer     GENERATED ALWAYS AS ((phash & 65535)::integer) STORED,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (inspection_id, image_index)
);

CREATE INDEX pickup_image_hashes_band0_idx ON pickup_image_hashes (band0);
CREATE INDEX pickup_image_hashes_band1_idx ON pickup_image_hashes (band1);
CREATE INDEX pickup_image_hashes_band2_idx ON pickup_image_hashes (band2);
CREATE INDEX pickup_image_hashes_band3_idx ON pickup_image_hashes (band3);
