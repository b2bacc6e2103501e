-- Issue 19 item 12: campaign ids are sequential, so an unannounced campaign
-- could be found by counting. An unpublished campaign answers like an
-- unknown id to everyone but the admin. Existing campaigns stay public.
ALTER TABLE campaigns ADD COLUMN published boolean NOT NULL DEFAULT true;
