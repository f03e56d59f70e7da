"""Column names of the data contracts, in one place so no module spells them twice.

See DESIGN.md ("Data contracts"). Every table is parquet in the workspace.
"""

# items
ITEM_ID = "item_id"
TITLE = "title"
DESCRIPTION = "description"
CATEGORY = "category"
PRICE = "price"
IMAGE_URI = "image_uri"
IMAGE_SOURCE = "image_source"  # original | generated | none
CREATED_AT = "created_at"
AVAILABLE = "available"  # in stock / may be recommended (bool; missing: true)

# users
USER_ID = "user_id"

# impressions (the click log)
REQUEST_ID = "request_id"
POSITION = "position"
EVENT_TIMESTAMP = "event_timestamp"
CLICKED = "clicked"
PROPENSITY = "propensity"  # P(logging policy shows this item in this position)
SLOT_PROPENSITIES = "slot_propensities"  # the same at every position of the slate (list)
POLICY = "policy"

# item_embeddings
IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"
EMBEDDING = "embedding"
MODEL_VERSION = "model_version"
CONTENT_HASH = "content_hash"

# quarantine
REASON = "reason"

IMAGE_SOURCES = ("original", "generated", "none")
