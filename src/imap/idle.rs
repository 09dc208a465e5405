//! IDLE (RFC 2177): the continuation, and the folder updates sent while idling (the read
//! loop in `session` pushes them as change notifications arrive).

use imap_codec::imap_types::core::Tag;
use imap_codec::imap_types::response::{CommandContinuationRequest, Status};
use imap_next::server::Server;

use super::session::Session;
use super::state::Phase;

impl Session {
    pub(super) fn idle_start(&mut self, server: &mut Server, tag: Tag<'static>) {
        if self.phase.authed().is_none() {
            let dummy = Status::bad(Some(tag.clone()), None, "x").expect("valid status");
            if server.idle_reject(dummy).is_ok() {
                self.suppress += 1;
            }
            self.conn.bad(&tag, "Not logged in");
            return;
        }
        let cont = CommandContinuationRequest::basic(None, "idling").expect("valid text");
        let _ = server.idle_accept(cont);
        self.idling = Some(tag);
        if let Phase::Selected(authed, selected) = &mut self.phase {
            selected.dirty = true;
            selected.sync(&mut self.conn, authed, true);
        }
    }
}
