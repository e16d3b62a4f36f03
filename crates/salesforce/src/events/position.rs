//! The replay id inside a feed's cursor.
//!
//! A feed's cursor is the kit's stamp cursor, a JSON object; the replay id
//! of the change events it covers rides beside its fields, base64, under
//! [`KEY`]. So it is stored exactly when the cursor is (after the page's
//! publish was confirmed), and a subscription resumes from it when a
//! connector starts or the feed moves to another producer replica.
//! Cursors stored before change events have none (the subscription then
//! starts at LATEST, with a catch-up query from the cursor); an older
//! release reading a cursor with one ignores the key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crmsync_connector::Cursor;
use serde_json::Value;

use super::ledger::ReplayId;

/// The key the replay id is stored under.
pub(crate) const KEY: &str = "replay_id";

/// The replay id `cursor` carries, if any (a value that is not base64 is
/// taken as none: the subscription then starts afresh).
pub(crate) fn replay_of(cursor: Option<&Cursor>) -> Option<ReplayId> {
    let text = cursor?.0.get(KEY)?.as_str()?;
    STANDARD.decode(text).ok().filter(|bytes| !bytes.is_empty())
}

/// `cursor` carrying `replay` (none: without one).
pub(crate) fn with_replay(mut cursor: Cursor, replay: Option<&[u8]>) -> Cursor {
    if let Value::Object(fields) = &mut cursor.0 {
        match replay {
            Some(r) if !r.is_empty() => {
                fields.insert(KEY.to_owned(), Value::String(STANDARD.encode(r)));
            }
            _ => {
                fields.remove(KEY);
            }
        }
    }
    cursor
}

#[cfg(test)]
mod tests {
    use crmsync_connector::stamp_cursor::StampCursor;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_replay_id_rides_in_the_cursor_and_round_trips() {
        let stamp = StampCursor::default().save();
        let replay = vec![0, 0, 0, 0, 0, 0, 0x01, 0xff];
        let carried = with_replay(stamp.clone(), Some(&replay));
        assert_eq!(carried.0[KEY], "AAAAAAAAAf8=");
        assert_eq!(replay_of(Some(&carried)), Some(replay));
        // Through storage (JSON text) and back.
        let stored: Cursor = serde_json::from_str(&serde_json::to_string(&carried).unwrap()).unwrap();
        assert_eq!(replay_of(Some(&stored)), replay_of(Some(&carried)));
        assert_eq!(with_replay(carried, None), stamp, "and can be taken out again");
    }

    #[test]
    fn cursors_from_before_change_events_read_as_before_and_older_releases_read_new_ones() {
        let old = Cursor(json!({"settled": "2024-05-01T10:20:30Z", "pos": ["2024-05-01T10:20:31Z", "00Q5g00000AbCdEEAA"]}));
        assert_eq!(replay_of(Some(&old)), None);
        assert_eq!(replay_of(None), None);
        let new = with_replay(old.clone(), Some(&[1, 2, 3]));
        let read = StampCursor::load(Some(&new)).expect("the stamp cursor ignores the replay id");
        assert_eq!(read, StampCursor::load(Some(&old)).unwrap());
        assert_eq!(replay_of(Some(&Cursor(json!({"replay_id": "not base64!"})))), None);
        assert_eq!(replay_of(Some(&Cursor(json!({"replay_id": ""})))), None);
    }
}
