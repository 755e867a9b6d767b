// Tests of the generated Kotlin bindings against a live qim-gateway.
// `cargo xtask test` compiles this with the generated qim_sdk_ffi.kt and
// qim_sdk.kt (the SDK's own records and enums) and runs
// `MainKt <scenario>` once per scenario, with the gateway address, CA and
// tokens in the environment (see xtask/src/kotlin.rs). A scenario passes
// when the JVM exits 0.

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

const val PATIENCE_MS = 20_000L

/// The body as text (invalid UTF-8 replaced), for text messages.
val IncomingMessage.text: String get() = body.decodeToString()

/// Records everything the client reports, for the test to wait on.
class Recorder : ClientListener {
    val messages = Channel<IncomingMessage>(Channel.UNLIMITED)
    val states = Channel<ConnectionState>(Channel.UNLIMITED)
    val outbox = Channel<Pair<String, OutboxStatus>>(Channel.UNLIMITED)
    val errors = Channel<QimException>(Channel.UNLIMITED)
    val signals = Channel<Signal>(Channel.UNLIMITED)

    override fun onMessage(message: IncomingMessage) {
        messages.trySend(message)
    }

    override fun onStateChanged(state: ConnectionState) {
        states.trySend(state)
    }

    override fun onOutboxStatus(clientMsgId: String, status: OutboxStatus) {
        outbox.trySend(clientMsgId to status)
    }

    override fun onError(error: QimException) {
        errors.trySend(error)
    }

    override fun onSignal(signal: Signal) {
        signals.trySend(signal)
    }
}

fun env(name: String): String = System.getenv(name) ?: throw IllegalStateException("$name is not set")

fun check(condition: Boolean, what: () -> String) {
    if (!condition) throw AssertionError(what())
}

suspend fun <T> Channel<T>.next(what: String): T =
    try {
        withTimeout(PATIENCE_MS) { receive() }
    } catch (e: kotlinx.coroutines.TimeoutCancellationException) {
        throw AssertionError("timed out waiting for $what")
    }

/// Asserts nothing more arrives for a while (catches duplicates).
suspend fun Channel<IncomingMessage>.quiet(ms: Long) {
    val extra = try {
        withTimeout(ms) { receive() }
    } catch (e: kotlinx.coroutines.TimeoutCancellationException) {
        null
    }
    check(extra == null) { "unexpected extra message: ${extra?.text}" }
}

fun options(
    user: String,
    device: String,
    server: String = env("QIM_SERVER"),
    dataDir: String? = null,
    resumeFrom: ULong = 0uL,
    localStore: String? = null,
) = ClientConfig(
    server = server,
    serverName = "localhost",
    caPem = File(env("QIM_CA")).readBytes(),
    token = env("QIM_TOKEN_" + user.uppercase()),
    deviceId = device,
    platform = Platform.ANDROID,
    resumeFrom = resumeFrom,
    dataDir = dataDir,
    resumption = true,
    localStore = localStore,
    tcpPort = System.getenv("QIM_TCP_PORT")?.toUShort(),
)

suspend fun connected(
    user: String,
    device: String,
    resumeFrom: ULong = 0uL,
    localStore: String? = null,
): Pair<QimClient, Recorder> {
    val client = QimClient(options(user, device, resumeFrom = resumeFrom, localStore = localStore))
    val recorder = Recorder()
    client.setListener(recorder)
    client.connect()
    check(client.state() == ConnectionState.CONNECTED) { "$user is not connected: ${client.state()}" }
    return client to recorder
}

/// Two clients chat both ways, errors are typed, and a network change keeps
/// the session.
suspend fun chat() {
    val (alice, aliceEvents) = connected("alice", "alice-phone")
    val (bob, bobEvents) = connected("bob", "bob-phone")
    check(alice.userId() == "alice") { "user id ${alice.userId()}" }

    val receipts = (1..5).map { alice.send("bob", "hello bob $it") }
    check(receipts.zipWithNext().all { (a, b) -> a.seq < b.seq }) { "receipt seqs not increasing" }
    for ((i, receipt) in receipts.withIndex()) {
        val m = bobEvents.messages.next("bob's message ${i + 1}")
        check(m.text == "hello bob ${i + 1}") { "bob got '${m.text}'" }
        check(m.fromUser == "alice" && m.seq == receipt.seq) { "bob got ${m.fromUser}/${m.seq}" }
    }
    bob.send("alice", "hi alice")
    val reply = aliceEvents.messages.next("alice's reply")
    check(reply.text == "hi alice" && reply.fromUser == "bob") { "alice got '${reply.text}'" }

    // A send's progress reaches the listener.
    val id = alice.enqueue("bob", "queued")
    var sent = false
    while (!sent) {
        val (msgId, status) = aliceEvents.outbox.next("outbox status of $id")
        if (msgId == id && status is OutboxStatus.Sent) sent = true
    }
    check(bobEvents.messages.next("queued message").text == "queued") { "queued message" }

    // Typed errors become exceptions.
    try {
        alice.send("not a valid id!", "x")
        throw AssertionError("an invalid recipient was accepted")
    } catch (e: QimException.Rejected) {
        check(e.code == "INVALID_RECIPIENT") { "code ${e.code}" }
    }
    val impostor = QimClient(options("alice", "alice-tablet").copy(token = "qim1.alice.1.bad"))
    try {
        impostor.connect()
        throw AssertionError("a bad token logged in")
    } catch (e: QimException.Auth) {
        check(e.code == "BAD_TOKEN" || e.code == "TOKEN_EXPIRED") { "code ${e.code}" }
    }

    // Network change: the connection migrates, the session stays.
    val session = alice.sessionId()
    alice.setForeground(false)
    alice.networkChanged()
    alice.send("bob", "after the move")
    check(bobEvents.messages.next("message after the move").text == "after the move") { "after move" }
    bob.send("alice", "still there?")
    check(aliceEvents.messages.next("reply after the move").text == "still there?") { "reply after move" }
    val stats = alice.stats()
    check(alice.sessionId() == session) { "session changed: $session -> ${alice.sessionId()}" }
    check(stats.migrations == 1uL && stats.sessions == 1uL) { "stats $stats" }
    alice.setForeground(true)

    alice.disconnect()
    bob.disconnect()
    check(alice.state() == ConnectionState.CLOSED) { "alice not closed" }
    bobEvents.messages.quiet(300)
}

/// Bob goes offline, alice sends, bob comes back from where he stopped.
suspend fun offlineCatchUp() {
    val (alice, _) = connected("alice", "alice-laptop")
    val (bob, bobEvents) = connected("bob", "bob-tablet")
    alice.send("bob", "while online")
    // A new device gets bob's whole inbox first; wait for the newest.
    var first = bobEvents.messages.next("online message")
    while (first.text != "while online") first = bobEvents.messages.next("online message")
    bob.disconnect()
    val texts = (1..3).map { "missed $it" }
    for (t in texts) alice.send("bob", t)
    val (bobAgain, again) = connected("bob", "bob-tablet", resumeFrom = first.seq)
    for (t in texts) {
        val m = again.messages.next(t)
        check(m.text == t) { "expected '$t', got '${m.text}'" }
    }
    again.messages.quiet(300)
    check(bobAgain.lastSeq() == first.seq + 3uL) { "last seq ${bobAgain.lastSeq()}" }
    alice.disconnect()
    bobAgain.disconnect()
}

/// Reconnects with a resumed TLS session (the login goes as 0-RTT early
/// data) and without: both deliver everything sent while reconnecting.
suspend fun resumption() {
    val (alice, _) = connected("alice", "alice-watch")
    for (resume in listOf(true, false)) {
        val device = if (resume) "bob-resumes" else "bob-full"
        val bob = QimClient(options("bob", device).copy(resumption = resume))
        val bobEvents = Recorder()
        bob.setListener(bobEvents)
        bob.connect()
        alice.send("bob", "before $device")
        var m = bobEvents.messages.next("first message of $device")
        while (m.text != "before $device") m = bobEvents.messages.next("first message of $device")
        for (round in 1..3) {
            bob.reconnect()
            val text = "round $round of $device"
            alice.send("bob", text)
            val got = bobEvents.messages.next(text)
            check(got.text == text) { "expected '$text', got '${got.text}'" }
        }
        bobEvents.messages.quiet(300)
        val stats = bob.stats()
        check(stats.sessions == 4uL) { "$device sessions ${stats.sessions}" }
        if (resume) {
            check(stats.zeroRttAccepted == 3uL) { "resumed reconnects accepted as 0-RTT: ${stats.zeroRttAccepted}" }
        } else {
            check(stats.zeroRttAccepted == 0uL) { "0-RTT without resumption: ${stats.zeroRttAccepted}" }
        }
        bob.disconnect()
    }
    alice.disconnect()
}

/// First process: offline (the server address swallows packets), queue
/// messages, exit. Their ids go to QIM_OUTBOX_IDS.
suspend fun outboxWrite() {
    val carol = QimClient(options("carol", "carol-phone", dataDir = env("QIM_DATA_DIR")))
    val events = Recorder()
    carol.setListener(events)
    carol.start()
    val ids = (1..3).map { carol.enqueue("dave", "offline $it") }
    for (id in ids) {
        val (msgId, status) = events.outbox.next("Sending of $id")
        check(msgId == id && status is OutboxStatus.Sending) { "expected Sending for $id, got $msgId $status" }
    }
    check(carol.state() != ConnectionState.CONNECTED) { "carol should be offline" }
    File(env("QIM_OUTBOX_IDS")).writeText(ids.joinToString("\n"))
    carol.disconnect()
}

/// Second process: same data directory, server reachable: the queued
/// messages are sent, reported Sent, and dave gets each exactly once.
suspend fun outboxDeliver() {
    val ids = File(env("QIM_OUTBOX_IDS")).readLines().filter { it.isNotBlank() }
    check(ids.size == 3) { "ids file: $ids" }
    val (dave, daveEvents) = connected("dave", "dave-phone")
    val carol = QimClient(options("carol", "carol-phone", dataDir = env("QIM_DATA_DIR")))
    val events = Recorder()
    carol.setListener(events)
    carol.connect()
    val sent = mutableSetOf<String>()
    while (sent.size < ids.size) {
        val (msgId, status) = events.outbox.next("Sent statuses")
        if (status is OutboxStatus.Sent) sent.add(msgId)
    }
    check(sent == ids.toSet()) { "sent $sent, queued $ids" }
    for (i in 1..3) {
        val m = daveEvents.messages.next("offline message $i")
        check(m.text == "offline $i" && m.clientMsgId == ids[i - 1]) { "dave got '${m.text}' ${m.clientMsgId}" }
    }
    daveEvents.messages.quiet(500)
    carol.disconnect()
    dave.disconnect()
}

/// Every conversation of the client, page by page.
suspend fun QimClient.allConversations(): List<Conversation> {
    val out = mutableListOf<Conversation>()
    var after: ByteArray? = null
    do {
        val page = conversations(after, 2u)
        out.addAll(page.conversations)
        after = page.next
    } while (after != null)
    return out
}

suspend fun QimClient.conversationWith(peer: Peer): Conversation? = allConversations().find { it.peer == peer }

/// Waits for an item matching `accept`, skipping the others (a new
/// device first gets the user's whole inbox).
suspend fun <T> Channel<T>.until(what: String, accept: (T) -> Boolean): T {
    while (true) {
        val m = next(what)
        if (accept(m)) return m
    }
}

/// Unread counts: alice sends bob three messages, bob's conversation list
/// shows them unread, bob marks them read, the count drops to zero and
/// bob's other device hears of it.
suspend fun unread() {
    val alice = Peer.User("alice")
    val (bob, bobEvents) = connected("bob", "bob-watch")
    val (bobTablet, tabletEvents) = connected("bob", "bob-desk")
    val (sender, _) = connected("alice", "alice-desk")

    // Start from a read conversation, whatever earlier scenarios left.
    val hello = sender.send("bob", "unread baseline")
    bobEvents.messages.until("baseline") { it.msgId == hello.msgId }
    val baseline = bob.markRead(alice, hello.seq)
    check(baseline.unread == 0u && baseline.readSeq == hello.seq) { "baseline $baseline" }

    val texts = (1..3).map { "unread $it" }
    val receipts = texts.map { sender.send("bob", it) }
    val got = texts.map { t -> bobEvents.messages.until(t) { it.event == null && it.text == t } }
    for ((m, receipt) in got.zip(receipts)) {
        check(m.seq == receipt.seq && m.conversation == alice && !m.outgoing) { "bob got $m" }
        check(!m.recalled && m.editedAtMs == 0L && m.replyTo == null && !m.mentionsMe) { "plain message $m" }
    }
    val before = bob.conversationWith(alice) ?: throw AssertionError("no conversation with alice")
    check(before.unread == 3u) { "unread ${before.unread}, expected 3" }
    check(before.readSeq == hello.seq && before.lastSeq == got.last().seq) { "cursor $before" }
    check(before.lastMessage?.text == "unread 3") { "last message ${before.lastMessage?.text}" }
    check(!before.pinned && !before.muted && before.updatedMs > 0L) { "flags $before" }

    // History, newest first, pages of two.
    val page = bob.history(alice, HistoryAnchor.End, false, 2u)
    check(page.messages.map { it.text } == listOf("unread 3", "unread 2") && page.more) { "history ${page.messages.map { it.text }}" }
    val older = bob.history(alice, HistoryAnchor.Seq(page.messages.last().seq), false, 1u)
    check(older.messages.map { it.text } == listOf("unread 1")) { "older ${older.messages.map { it.text }}" }

    val marked = bob.markRead(alice, got.last().seq)
    check(marked.unread == 0u && marked.readSeq == got.last().seq) { "after markRead $marked" }
    val after = bob.conversationWith(alice) ?: throw AssertionError("conversation with alice gone")
    check(after.unread == 0u && after.readSeq == got.last().seq) { "after markRead, listed $after" }

    // The other device hears of the read.
    val read = tabletEvents.messages.until("read event on bob's other device") {
        val e = it.event
        e is Event.Read && e.readSeq == got.last().seq
    }
    val event = read.event as Event.Read
    check(event.conversation == alice && event.unread == 0u) { "read event $event" }
    val seen = bobTablet.conversationWith(alice) ?: throw AssertionError("tablet has no conversation")
    check(seen.unread == 0u) { "tablet unread ${seen.unread}" }

    // Typed errors for bad input.
    try {
        bob.markRead(Peer.User("not a valid id!"), 1uL)
        throw AssertionError("markRead of an invalid peer was accepted")
    } catch (e: QimException.Rejected) {
        check(e.code == "INVALID_ARGUMENT") { "code ${e.code}" }
    }

    sender.disconnect()
    bob.disconnect()
    bobTablet.disconnect()
}

/// Expects `block` to be refused with the wire code `code`.
suspend fun expectRejected(code: String, what: String, block: suspend () -> Unit) {
    try {
        block()
    } catch (e: QimException.Rejected) {
        check(e.code == code) { "$what: refused with ${e.code} (${e.reason}), expected $code" }
        return
    }
    throw AssertionError("$what was accepted; expected a refusal with $code")
}

/// Waits, checking every 50 ms, for a condition that raises no event (time
/// passing, a record written after the event that announced it).
suspend fun pollUntil(what: String, condition: suspend () -> Boolean) {
    val deadline = System.currentTimeMillis() + PATIENCE_MS
    while (!condition()) {
        if (System.currentTimeMillis() > deadline) throw AssertionError("timed out waiting for $what")
        delay(50)
    }
}

/// Asserts that no message matching `unwanted` arrives for `ms` (others are
/// skipped).
suspend fun Channel<IncomingMessage>.noneFor(ms: Long, what: String, unwanted: (IncomingMessage) -> Boolean) {
    val end = System.currentTimeMillis() + ms
    while (true) {
        val left = end - System.currentTimeMillis()
        if (left <= 0) return
        val m = try {
            withTimeout(left) { receive() }
        } catch (e: kotlinx.coroutines.TimeoutCancellationException) {
            return
        }
        check(!unwanted(m)) { "$what: got '${m.text}' from ${m.fromUser}" }
    }
}

/// The next `n` chat messages (not events) of `conversation`.
suspend fun Channel<IncomingMessage>.chat(n: Int, conversation: Peer, what: String): List<IncomingMessage> =
    (1..n).map { until("$what ($it of $n)") { m -> m.event == null && m.conversation == conversation } }

/// The single-device policy: a login on a second device kicks the first,
/// which hears why (KICKED) and stays closed.
suspend fun kicked() {
    val (phone, phoneEvents) = connected("uma", "uma-phone")
    val (desktop, _) = connected("uma", "uma-desktop")
    val error = phoneEvents.errors.next("the kick")
    check(error is QimException.Rejected && error.code == "KICKED" && !error.retryable) { "phone got $error" }
    phoneEvents.states.until("closed") { it == ConnectionState.CLOSED }
    check(phone.state() == ConnectionState.CLOSED) { "phone ${phone.state()}" }
    val again = try {
        withTimeout(500) { phoneEvents.states.receive() }
    } catch (e: kotlinx.coroutines.TimeoutCancellationException) {
        null
    }
    check(again == null) { "the kicked phone moved on to $again" }
    check(desktop.state() == ConnectionState.CONNECTED) { "desktop ${desktop.state()}" }
    phone.disconnect()
    desktop.disconnect()
}

/// Hands out a token from the environment and records why it was asked.
class EnvTokens(private val user: String) : TokenProvider {
    val asked = Channel<TokenRequest>(Channel.UNLIMITED)

    override fun freshToken(reason: TokenRequest): String? {
        asked.trySend(reason)
        return env("QIM_TOKEN_" + user.uppercase())
    }
}

/// A client whose token the server refuses asks its Kotlin token provider
/// for a fresh one instead of failing, logs in with it, and the session
/// goes on: it receives and sends.
suspend fun tokenProvider() {
    val tokens = EnvTokens("vera")
    val vera = QimClient(options("vera", "vera-phone").copy(token = "qim2.forged.token"))
    val events = Recorder()
    vera.setListener(events)
    vera.setTokenProvider(tokens)
    vera.connect()
    check(tokens.asked.next("the provider's call") == TokenRequest.REFUSED) { "asked for another reason" }
    check(vera.state() == ConnectionState.CONNECTED) { "vera ${vera.state()}" }
    val (walt, waltEvents) = connected("walt", "walt-phone")
    walt.send("vera", "hello with a fresh token")
    val got = events.messages.next("walt's message")
    check(got.text == "hello with a fresh token") { "vera got ${got.text}" }
    vera.send("walt", "and back")
    check(waltEvents.messages.next("vera's reply").text == "and back") { "walt's message" }
    walt.disconnect()
    vera.disconnect()
}

/// UDP to the gateway is blocked for ulla: she logs in over TLS on TCP,
/// the app can show it, and she chats with udo (on QUIC) both ways, in
/// order and once.
suspend fun udpBlocked() {
    val ulla = QimClient(options("ulla", "ulla-phone", server = env("QIM_BLOCKED_SERVER")))
    val ullaEvents = Recorder()
    ulla.setListener(ullaEvents)
    ulla.connect()
    check(ulla.state() == ConnectionState.CONNECTED) { "ulla is not connected: ${ulla.state()}" }
    check(ulla.transport() == Transport.TCP) { "ulla's transport: ${ulla.transport()}" }
    val (udo, udoEvents) = connected("udo", "udo-phone")
    check(udo.transport() == Transport.QUIC) { "udo's transport: ${udo.transport()}" }
    for (i in 1..5) {
        ulla.send("udo", "over tcp $i")
        udo.send("ulla", "over quic $i")
    }
    for (i in 1..5) {
        val m = udoEvents.messages.next("udo's message $i")
        check(m.text == "over tcp $i" && m.fromUser == "ulla") { "udo got '${m.text}'" }
        val r = ullaEvents.messages.next("ulla's message $i")
        check(r.text == "over quic $i" && r.fromUser == "udo") { "ulla got '${r.text}'" }
    }
    udoEvents.messages.quiet(300)
    ullaEvents.messages.quiet(300)
    ulla.disconnect()
    udo.disconnect()
}

/// Push tokens: a phone registers its APNs token and a tablet its FCM
/// token; each sees only its own token's value; malformed and oversized
/// tokens and another device's are refused with their codes; preview
/// settings are kept per conversation; logout removes the phone's token.
suspend fun pushTokens() {
    val (phone, _) = connected("xena", "xena-phone")
    val (tablet, _) = connected("xena", "xena-tablet")
    val apns = "a1".repeat(32)
    val mine = phone.registerPushToken(PushProvider.APNS, apns, "com.example.chat", true)
    check(mine.size == 1 && mine[0].device == "xena-phone" && mine[0].token == apns && mine[0].sandbox) { "after register: $mine" }
    val fcm = "fcm:" + "x".repeat(150)
    val both = tablet.registerPushToken(PushProvider.FCM, fcm, "example-project", false)
    check(both.map { it.device }.sorted() == listOf("xena-phone", "xena-tablet")) { "devices $both" }
    check(both.first { it.device == "xena-phone" }.token.isEmpty()) { "another device's token is not shown: $both" }
    check(both.first { it.device == "xena-tablet" }.let { it.token == fcm && it.provider == PushProvider.FCM && it.appId == "example-project" }) { "own token $both" }

    expectRejected("INVALID_ARGUMENT", "an oversized token") {
        phone.registerPushToken(PushProvider.APNS, "ab".repeat(300), "com.example.chat", false)
    }
    expectRejected("INVALID_ARGUMENT", "a token with spaces") {
        phone.registerPushToken(PushProvider.APNS, "not hex at all", "com.example.chat", false)
    }
    expectRejected("INVALID_ARGUMENT", "an empty app id") {
        phone.registerPushToken(PushProvider.FCM, fcm, "", false)
    }

    val settings = phone.pushSettings(null, listOf(PreviewSetting(Peer.User("boss"), false)))
    check(settings.preview && settings.conversations == listOf(PreviewSetting(Peer.User("boss"), false))) { "settings $settings" }
    val off = tablet.pushSettings(false, emptyList())
    check(!off.preview && off.conversations.size == 1) { "settings seen by the tablet $off" }

    phone.logout()
    val left = tablet.pushTokens()
    check(left.map { it.device } == listOf("xena-tablet")) { "after the phone's logout: $left" }
    tablet.unregisterPushToken()
    check(tablet.pushTokens().isEmpty()) { "after the tablet's removal" }
    tablet.disconnect()
}

fun main(args: Array<String>) {
    val scenario = args.firstOrNull() ?: "chat"
    try {
        runBlocking {
            when (scenario) {
                "chat" -> chat()
                "offline-catch-up" -> offlineCatchUp()
                "outbox-write" -> outboxWrite()
                "outbox-deliver" -> outboxDeliver()
                "unread" -> unread()
                "resumption" -> resumption()
                "groups" -> groups()
                "recall-edit" -> recallEdit()
                "contacts" -> contacts()
                "presence-typing" -> presenceTyping()
                "scheduled" -> scheduled()
                "kicked" -> kicked()
                "token-provider" -> tokenProvider()
                "udp-blocked" -> udpBlocked()
                "push-tokens" -> pushTokens()
                "media" -> media()
                "media-pending-write" -> mediaPendingWrite()
                "media-pending-resume" -> mediaPendingResume()
                else -> throw IllegalArgumentException("unknown scenario $scenario")
            }
        }
    } catch (e: Throwable) {
        System.err.println("kotlin scenario $scenario failed: $e")
        e.printStackTrace()
        exitProcess(1)
    }
    exitProcess(0)
}
