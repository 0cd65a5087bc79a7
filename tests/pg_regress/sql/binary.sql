-- binary wire format, byte-for-byte pgvector's: int16 dim, int16 unused, big-endian elements

SELECT vector_send('[1,-2,0.5]'), halfvec_send('[1,-2,0.5]');

-- round trip through binary COPY (uses receive)
CREATE TABLE src (id int, v vector(3), h halfvec(3));
INSERT INTO src VALUES (1, '[1,-2,0.5]', '[1,-2,0.5]'), (2, '[3.4028235e38,1e-45,-0]', '[65504,6e-8,-0]');
COPY src TO '/tmp/ragtune_regress_binary.copy' WITH (FORMAT binary);
CREATE TABLE dst (LIKE src);
COPY dst FROM '/tmp/ragtune_regress_binary.copy' WITH (FORMAT binary);
SELECT d.id, d.v, d.h, d.v = s.v AND d.h = s.h AS identical FROM dst d JOIN src s USING (id) ORDER BY id;

-- receive checks what it reads: wrong typmod
CREATE TABLE narrow (id int, v vector(2), h halfvec(3));
COPY narrow FROM '/tmp/ragtune_regress_binary.copy' WITH (FORMAT binary);

-- receive rejects malformed payloads (bytea fields copied out carry crafted bytes)
CREATE TABLE crafted (label text, payload bytea);
CREATE TABLE target (v vector);
CREATE TABLE target_half (h halfvec);
CREATE FUNCTION pg_temp.receive(payload bytea, type_name text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE crafted;
  INSERT INTO crafted VALUES ('x', payload);
  COPY (SELECT payload FROM crafted) TO '/tmp/ragtune_regress_crafted.copy' WITH (FORMAT binary);
  IF type_name = 'vector' THEN
    COPY target FROM '/tmp/ragtune_regress_crafted.copy' WITH (FORMAT binary);
  ELSE
    COPY target_half FROM '/tmp/ragtune_regress_crafted.copy' WITH (FORMAT binary);
  END IF;
  RETURN 'accepted';
EXCEPTION WHEN OTHERS THEN
  RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
SELECT label, pg_temp.receive(payload, type_name) FROM (VALUES
  ('valid vector', '\x000100003f800000'::bytea, 'vector'),
  ('unused is not 0', '\x000100013f800000', 'vector'),
  ('NaN element', '\x000100007fc00000', 'vector'),
  ('infinite element', '\x000100007f800000', 'vector'),
  ('zero dimensions', '\x00000000', 'vector'),
  ('negative dimensions', '\xffff0000', 'vector'),
  ('too many dimensions', '\x3e810000', 'vector'),
  ('truncated', '\x000300003f8000003f800000', 'vector'),
  ('trailing bytes', '\x000100003f80000000', 'vector'),
  ('valid halfvec', '\x000100003c00', 'halfvec'),
  ('halfvec NaN', '\x000100007e00', 'halfvec'),
  ('halfvec infinity', '\x000100007c00', 'halfvec')) AS c(label, payload, type_name);
SELECT v FROM target;
SELECT h FROM target_half;
DROP TABLE src, dst, narrow, crafted, target, target_half;
