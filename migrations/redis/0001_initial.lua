-- 0001_initial: the first key layout (see src/store/keys.rs).
--
-- A new deployment has nothing to convert: this migration exists so that the layout has a
-- version from the first start, and a node of a later release can tell what it finds.
-- ARGV[1] is the key prefix. Migrations run with EVAL under the schema lock, in order, once.
return 'ok'
