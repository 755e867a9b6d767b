// Scenarios of the social features: groups, recall and edit, contacts,
// presence and typing, scheduled sends. Helpers live in Main.kt.

import java.io.File
import kotlin.system.exitProcess
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import uniffi.qim_sdk.ConnectionState
import uniffi.qim_sdk.Conversation
import uniffi.qim_sdk.Event
import uniffi.qim_sdk.GroupChange
import uniffi.qim_sdk.GroupRole
import uniffi.qim_sdk.HistoryAnchor
import uniffi.qim_sdk.IncomingMessage
import uniffi.qim_sdk.MessageExtras
import uniffi.qim_sdk.OutgoingMessage
import uniffi.qim_sdk.Peer
import uniffi.qim_sdk.Platform
import uniffi.qim_sdk.PreviewSetting
import uniffi.qim_sdk.PushProvider
import uniffi.qim_sdk.Quote
import uniffi.qim_sdk.Signal
import uniffi.qim_sdk.TokenRequest
import uniffi.qim_sdk.Transport
import uniffi.qim_sdk_ffi.ClientConfig
import uniffi.qim_sdk_ffi.ClientListener
import uniffi.qim_sdk_ffi.OutboxStatus
import uniffi.qim_sdk_ffi.QimClient
import uniffi.qim_sdk_ffi.QimException
import uniffi.qim_sdk_ffi.ReadCount
import uniffi.qim_sdk_ffi.TokenProvider

/// Groups: the owner creates a group and invites two members; everyone
/// gets the messages in order; read counts; a muted member's send is
/// refused; members page by page with roles; a removed member stops
/// receiving and may no longer send; rename, roles and dissolve.
suspend fun groups() {
    val band = Peer.Group("band")
    val (gina, ginaEvents) = connected("gina", "gina-phone")
    val (hugo, hugoEvents) = connected("hugo", "hugo-phone")
    val (iris, irisEvents) = connected("iris", "iris-phone")

    val created = gina.createGroup("band", "The band", listOf())
    check(created.owner == "gina" && created.name == "The band" && created.memberCount == 1u) { "created $created" }
    check(!created.mutedAll && !created.dissolved && !created.readDiffusion) { "created $created" }
    val invited = gina.changeGroup("band", GroupChange.Invite(listOf("hugo", "iris")))
    check(invited.memberCount == 3u) { "after invite: $invited" }

    val texts = (1..3).map { "band news $it" }
    val receipts = texts.map { gina.sendGroup("band", it) }
    val hugoGot = hugoEvents.messages.chat(3, band, "hugo: group messages")
    val irisGot = irisEvents.messages.chat(3, band, "iris: group messages")
    for ((who, got) in listOf("hugo" to hugoGot, "iris" to irisGot)) {
        check(got.map { it.text } == texts) { "$who got ${got.map { it.text }}" }
        check(got.map { it.msgId } == receipts.map { it.msgId }) { "$who: ids ${got.map { it.msgId }}" }
        check(got.all { it.fromUser == "gina" && !it.outgoing }) { "$who: senders ${got.map { it.fromUser }}" }
        check(got.zipWithNext().all { (a, b) -> a.seq < b.seq }) { "$who: seqs ${got.map { it.seq }}" }
    }

    // "Read by 1 of 2" once hugo read the last message.
    val unread = gina.readCount(receipts.last().msgId)
    check(unread == ReadCount(0u, 2u)) { "read count before anyone read: $unread" }
    hugo.markRead(band, hugoGot.last().seq)
    val read = gina.readCount(receipts.last().msgId)
    check(read == ReadCount(1u, 2u)) { "read count after hugo read: $read" }

    // A muted member cannot send; the others can.
    gina.changeGroup("band", GroupChange.MuteMember("hugo", true))
    expectRejected("MUTED", "a muted member's send") { hugo.sendGroup("band", "can you hear me?") }
    iris.sendGroup("band", "iris here")
    check(ginaEvents.messages.chat(1, band, "iris's message")[0].text == "iris here") { "gina missed iris" }
    check(hugoEvents.messages.chat(1, band, "iris's message")[0].text == "iris here") { "hugo missed iris" }

    // A mention is flagged for the one mentioned; @all is for admins only.
    gina.changeGroup("band", GroupChange.MuteMember("hugo", false))
    val shout = OutgoingMessage("", "text", "hugo, your solo".toByteArray(), null)
    gina.sendGroupWith("band", shout, MessageExtras(null, listOf("hugo"), false, listOf()))
    val mention = hugoEvents.messages.chat(1, band, "mention")[0]
    check(mention.text == "hugo, your solo" && mention.mentionsMe && mention.mentions == listOf("hugo")) { "mention $mention" }
    check(!irisEvents.messages.chat(1, band, "mention of hugo")[0].mentionsMe) { "iris flagged for hugo's mention" }
    expectRejected("PERMISSION_DENIED", "@all by a member") {
        hugo.sendGroupWith("band", OutgoingMessage("", "text", "everyone!".toByteArray(), null), MessageExtras(null, listOf(), true, listOf()))
    }

    // The whole group muted: only admins (and the owner) send.
    check(gina.changeGroup("band", GroupChange.MuteAll(true)).mutedAll) { "not muted all" }
    expectRejected("MUTED", "a send in a muted group") { hugo.sendGroup("band", "hello?") }
    gina.sendGroup("band", "quiet please")
    check(hugoEvents.messages.chat(1, band, "owner's send in a muted group")[0].text == "quiet please") { "owner muted" }
    check(irisEvents.messages.chat(1, band, "owner's send in a muted group")[0].text == "quiet please") { "owner muted" }
    check(!gina.changeGroup("band", GroupChange.MuteAll(false)).mutedAll) { "still muted all" }
    gina.changeGroup("band", GroupChange.MuteMember("hugo", true))

    // Members, two per page, with roles and mutes.
    val first = gina.groupMembers("band", null, 2u)
    check(first.members.size == 2 && first.next != null) { "first page $first" }
    val second = gina.groupMembers("band", first.next, 2u)
    check(second.members.size == 1 && second.next == null) { "second page $second" }
    val members = (first.members + second.members).associateBy { it.user }
    check(members.keys == setOf("gina", "hugo", "iris")) { "members ${members.keys}" }
    check(members.getValue("gina").role == GroupRole.OWNER && !members.getValue("gina").muted) { "gina ${members["gina"]}" }
    check(members.getValue("hugo").role == GroupRole.MEMBER && members.getValue("hugo").muted) { "hugo ${members["hugo"]}" }
    check(!members.getValue("iris").muted) { "iris ${members["iris"]}" }

    // A removed member stops receiving at once and may not send.
    val removed = gina.changeGroup("band", GroupChange.Remove(listOf("iris")))
    check(removed.memberCount == 2u) { "after remove: $removed" }
    gina.changeGroup("band", GroupChange.MuteMember("hugo", false))
    gina.sendGroup("band", "without iris")
    hugo.sendGroup("band", "hugo unmuted")
    check(hugoEvents.messages.chat(1, band, "message after the removal")[0].text == "without iris") { "hugo after removal" }
    check(ginaEvents.messages.chat(1, band, "hugo unmuted")[0].text == "hugo unmuted") { "gina after unmute" }
    expectRejected("NOT_A_MEMBER", "a removed member's send") { iris.sendGroup("band", "let me back in") }
    irisEvents.messages.noneFor(500, "iris after her removal") { it.conversation == band && it.event == null }

    // Roles: an admin may rename; the owner dissolves.
    gina.changeGroup("band", GroupChange.SetRole("hugo", GroupRole.ADMIN))
    val renamed = hugo.changeGroup("band", GroupChange.Rename("The quartet"))
    check(renamed.name == "The quartet") { "renamed $renamed" }
    expectRejected("PERMISSION_DENIED", "dissolving by an admin") { hugo.changeGroup("band", GroupChange.Dissolve) }
    check(hugo.changeGroup("band", GroupChange.Leave).memberCount == 1u) { "hugo did not leave" }
    expectRejected("NOT_A_MEMBER", "a send after leaving") { hugo.sendGroup("band", "one more") }
    check(gina.changeGroup("band", GroupChange.Dissolve).dissolved) { "not dissolved" }
    // Dissolving removed every member, and the group is private: to its
    // former owner too it is gone.
    expectRejected("NOT_FOUND", "a dissolved private group's info") { gina.groupInfo("band") }

    gina.disconnect()
    hugo.disconnect()
    iris.disconnect()
}

/// Recall and edit: the recipient sees the new text flagged edited (live,
/// in history and in the local store's search) and the recall; a recall
/// after the server's window is refused. Replies, mentions, delete-for-me
/// and pinning go through the same calls.
suspend fun recallEdit() {
    val window = env("QIM_RECALL_WINDOW_MS").toLong()
    val kate = Peer.User("kate")
    val store = File.createTempFile("liam-local", ".sqlite")
    store.delete()
    val (sender, kateEvents) = connected("kate", "kate-phone")
    val (liam, liamEvents) = connected("liam", "liam-phone", localStore = store.path)

    // Sent first, recalled last: once the window has passed.
    val late = sender.send("liam", "this one stays")
    val sent = sender.send("liam", "meet at the harbour")
    val original = liamEvents.messages.until("original message") { it.msgId == sent.msgId }
    check(original.text == "meet at the harbour" && original.editedAtMs == 0L) { "original $original" }

    // Edit.
    sender.edit(sent.msgId, "meet at the station")
    val edit = liamEvents.messages.until("edit") { (it.event as? Event.Edited)?.msgId == sent.msgId }
    val edited = edit.event as Event.Edited
    check(String(edited.body) == "meet at the station" && edited.editedAtMs > 0L) { "edit event $edited" }
    check(edited.seq == original.seq && edited.conversation == kate) { "edit event $edited" }
    val shown = liam.history(kate, HistoryAnchor.End, false, 20u).messages.first { it.msgId == sent.msgId && it.event == null }
    check(shown.text == "meet at the station" && shown.editedAtMs > 0L) { "history after edit: $shown" }
    check(liam.search("station", 10u).map { it.msgId } == listOf(sent.msgId)) { "local search for the new text" }
    check(liam.search("harbour", 10u).isEmpty()) { "local search still finds the old text" }
    val local = liam.localHistory(kate, HistoryAnchor.End, false, 10u)
    check(local.messages.any { it.msgId == sent.msgId && it.text == "meet at the station" }) { "local history ${local.messages.map { it.text }}" }

    // A reply that quotes it and mentions kate.
    val quote = Quote(original.msgId, original.fromUser, original.kind, original.body)
    val reply = OutgoingMessage("kate", "text", "see you there".toByteArray(), null)
    val replied = liam.sendWith(reply, MessageExtras(quote, listOf("kate"), false, listOf()))
    val got = kateEvents.messages.until("the reply") { it.msgId == replied.msgId }
    check(got.text == "see you there" && got.mentionsMe) { "reply $got" }
    check(got.replyTo?.msgId == sent.msgId && got.replyTo?.fromUser == "kate") { "quote ${got.replyTo}" }

    // Recall within the window.
    val wrong = sender.send("liam", "wrong chat, sorry")
    sender.recall(wrong.msgId)
    liamEvents.messages.until("message later recalled") { it.msgId == wrong.msgId && it.event == null }
    val recall = liamEvents.messages.until("recall") { (it.event as? Event.Recalled)?.msgId == wrong.msgId }
    check((recall.event as Event.Recalled).byUser == "kate") { "recall event ${recall.event}" }
    val gone = liam.history(kate, HistoryAnchor.End, false, 20u).messages.first { it.msgId == wrong.msgId && it.event == null }
    check(gone.recalled && gone.body.isEmpty()) { "recalled message in history: $gone" }
    check(liam.search("wrong", 10u).isEmpty()) { "a recalled message is found by search" }
    expectRejected("ALREADY_RECALLED", "editing a recalled message") { sender.edit(wrong.msgId, "oops") }

    // Recall after the window.
    pollUntil("the recall window to pass") { System.currentTimeMillis() > late.serverTimeMs + window + 100 }
    expectRejected("RECALL_WINDOW_PASSED", "a recall after the window") { sender.recall(late.msgId) }
    val stays = liam.history(kate, HistoryAnchor.End, false, 20u).messages.first { it.msgId == late.msgId && it.event == null }
    check(!stays.recalled && stays.text == "this one stays") { "late message $stays" }

    // Delete for me, pin.
    liam.deleteForMe(stays.seq)
    val after = liam.history(kate, HistoryAnchor.End, false, 20u).messages
    check(after.none { it.msgId == late.msgId && it.event == null }) { "deleted message still in liam's history" }
    val pinned = liam.setFlags(kate, true, null)
    check(pinned.pinned && !pinned.muted) { "flags $pinned" }
    check(liam.allConversations().first().peer == kate) { "pinned conversation is not first" }

    sender.disconnect()
    liam.disconnect()
    store.delete()
}

/// Contacts: a friend request with a message, accepted (friends on both
/// sides) or rejected; a blocked user's messages are refused with BLOCKED.
suspend fun contacts() {
    val (mona, monaEvents) = connected("mona", "mona-phone")
    val (nick, nickEvents) = connected("nick", "nick-phone")
    val (rita, ritaEvents) = connected("rita", "rita-phone")
    val hello = "hi nick, it's mona from the climbing gym"

    val asked = mona.requestFriend("nick", hello)
    check(asked.outgoing == listOf("nick") && asked.friends.isEmpty()) { "mona after asking: $asked" }
    val request = nickEvents.messages.until("friend request") { it.event is Event.FriendRequest }
    val event = request.event as Event.FriendRequest
    check(event.from == "mona" && event.message == hello) { "request event $event" }
    val pending = nick.contacts().incoming
    check(pending.size == 1 && pending[0].user == "mona" && pending[0].message == hello && pending[0].atMs > 0L) { "pending $pending" }

    val accepted = nick.acceptFriend("mona")
    check(accepted.friends == listOf("mona") && accepted.incoming.isEmpty()) { "nick after accepting: $accepted" }
    val answer = monaEvents.messages.until("friend response") { it.event is Event.FriendResponse }
    val response = answer.event as Event.FriendResponse
    check(response.from == "nick" && response.accepted) { "response $response" }
    val monas = mona.contacts()
    check(monas.friends == listOf("nick") && monas.outgoing.isEmpty()) { "mona's contacts $monas" }

    // Rejected.
    rita.requestFriend("nick", "add me?")
    nickEvents.messages.until("rita's request") { (it.event as? Event.FriendRequest)?.from == "rita" }
    val rejected = nick.rejectFriend("rita")
    check(rejected.friends == listOf("mona") && rejected.incoming.isEmpty()) { "nick after rejecting: $rejected" }
    val no = ritaEvents.messages.until("rejection") { it.event is Event.FriendResponse }
    check(!(no.event as Event.FriendResponse).accepted) { "rejection ${no.event}" }
    check(rita.contacts().friends.isEmpty()) { "rita has friends" }

    // Blocked.
    mona.send("nick", "before the block")
    check(nickEvents.messages.chat(1, Peer.User("mona"), "message before the block")[0].text == "before the block") { "before block" }
    val blocked = nick.block("mona")
    check(blocked.blocked == listOf("mona") && blocked.friends.isEmpty()) { "blocking must end the friendship: $blocked" }
    expectRejected("BLOCKED", "a message from a blocked user") { mona.send("nick", "are you there?") }
    check(nick.unblock("mona").blocked.isEmpty()) { "still blocked" }
    mona.send("nick", "after the unblock")
    val next = nickEvents.messages.chat(1, Peer.User("mona"), "message after the unblock")[0]
    check(next.text == "after the unblock") { "nick got '${next.text}' (the refused message must never arrive)" }

    // Friends again, then no longer.
    mona.requestFriend("nick", "friends again?")
    check(nick.acceptFriend("mona").friends == listOf("mona")) { "not friends again" }
    check(mona.removeFriend("nick").friends.isEmpty()) { "mona still has friends" }
    check(nick.contacts().friends.isEmpty()) { "nick still lists mona" }

    mona.disconnect()
    nick.disconnect()
    rita.disconnect()
}

/// Presence and typing: only friends see presence; a subscribed friend
/// gets offline and online pushes through the listener, with last seen;
/// online time records the sessions; typing arrives as a signal and is
/// never stored.
suspend fun presenceTyping() {
    val started = System.currentTimeMillis()
    val olgaPeer = Peer.User("olga")
    val (olga, _) = connected("olga", "olga-phone")
    val (paul, paulEvents) = connected("paul", "paul-phone")
    expectRejected("PERMISSION_DENIED", "presence of a stranger") { paul.presence(listOf("olga")) }

    olga.requestFriend("paul", "it's olga")
    paulEvents.messages.until("olga's request") { it.event is Event.FriendRequest }
    paul.acceptFriend("olga")
    val now = paul.subscribePresence(listOf("olga"))
    check(now.size == 1 && now[0].user == "olga" && now[0].online) { "olga's presence $now" }

    olga.disconnect()
    val off = paulEvents.signals.until("olga offline") { it is Signal.Presence && it.v1.user == "olga" } as Signal.Presence
    check(!off.v1.online && off.v1.lastSeenMs >= started) { "offline push ${off.v1}" }
    val (olgaAgain, _) = connected("olga", "olga-phone")
    val on = paulEvents.signals.until("olga online") { it is Signal.Presence && it.v1.user == "olga" } as Signal.Presence
    check(on.v1.online) { "online push ${on.v1}" }
    check(paul.presence(listOf("olga")).single().online) { "queried presence" }

    // Typing: a signal, never a message.
    olgaAgain.typing(Peer.User("paul"), true)
    val typing = paulEvents.signals.until("typing") { it is Signal.Typing } as Signal.Typing
    check(typing.conversation == olgaPeer && typing.from == "olga" && typing.typing) { "typing $typing" }
    olgaAgain.typing(Peer.User("paul"), false)
    val stopped = paulEvents.signals.until("typing stopped") { it is Signal.Typing } as Signal.Typing
    check(!stopped.typing) { "stopped $stopped" }
    paulEvents.messages.quiet(300)
    val stored = paul.history(olgaPeer, HistoryAnchor.End, false, 50u).messages
    check(stored.none { it.event == null }) { "typing left a message in history: ${stored.map { it.text }}" }
    check((paul.conversationWith(olgaPeer)?.unread ?: 0u) == 0u) { "typing counted as unread" }

    // Online time: the ended session and the current one.
    pollUntil("olga's session records") {
        val spans = olgaAgain.onlineTime(started - 1_000, System.currentTimeMillis() + 1_000)
        spans.count { it.device == "olga-phone" } >= 2 && spans.any { it.endMs > it.startMs } && spans.any { it.endMs == 0L }
    }

    // Unsubscribed: no more pushes.
    paul.unsubscribePresence(listOf("olga"))
    olgaAgain.disconnect()
    val extra = try {
        withTimeout(500) { paulEvents.signals.receive() }
    } catch (e: kotlinx.coroutines.TimeoutCancellationException) {
        null
    }
    check(extra == null) { "signal after unsubscribing: $extra" }
    paul.disconnect()
}

/// Scheduled sends: delivered at their time, not before; a cancelled one
/// never arrives and cannot be cancelled twice.
suspend fun scheduled() {
    val (sam, _) = connected("sam", "sam-phone")
    val (tina, tinaEvents) = connected("tina", "tina-phone")
    val at = System.currentTimeMillis() + 1_500
    sam.schedule(Peer.User("tina"), "happy birthday", at)
    val cancelled = sam.schedule(Peer.User("tina"), "never mind", at)
    sam.cancelScheduled(cancelled)
    expectRejected("NOT_FOUND", "cancelling twice") { sam.cancelScheduled(cancelled) }
    val m = tinaEvents.messages.chat(1, Peer.User("sam"), "scheduled message")[0]
    check(System.currentTimeMillis() >= at) { "delivered ${at - System.currentTimeMillis()} ms early" }
    check(m.text == "happy birthday" && m.fromUser == "sam") { "tina got '${m.text}'" }
    tinaEvents.messages.quiet(700)
    sam.disconnect()
    tina.disconnect()
}

