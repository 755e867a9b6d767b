// Scenarios of images and files: uploads and downloads with progress and
// cancellation, attachments sent and received, a download refused to a
// user no message gave the blob to, and an upload left unfinished by one
// process and resumed by the next. Helpers live in Main.kt.

import java.io.File
import java.security.MessageDigest
import kotlin.random.Random
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.launch
import kotlinx.coroutines.withTimeout
import uniffi.qim_sdk.Attachment
import uniffi.qim_sdk.MessageExtras
import uniffi.qim_sdk.OutgoingMessage
import uniffi.qim_sdk.TransferProgress
import uniffi.qim_sdk_ffi.QimClient
import uniffi.qim_sdk_ffi.QimException
import uniffi.qim_sdk_ffi.TransferHandle
import uniffi.qim_sdk_ffi.TransferListener

/// Records a transfer's progress; runs `onEach` on every report.
class Progress(val onEach: (TransferProgress) -> Unit = {}) : TransferListener {
    val seen = java.util.Collections.synchronizedList(mutableListOf<TransferProgress>())

    override fun onProgress(progress: TransferProgress) {
        seen.add(progress)
        onEach(progress)
    }

    /// Asserts the reports never go back and end with every byte done.
    fun checkComplete(total: ULong, what: String) {
        val reports = seen.toList()
        check(reports.isNotEmpty()) { "$what: no progress reported" }
        check(reports.zipWithNext().all { (a, b) -> a.done <= b.done && a.sent <= b.sent }) {
            "$what: progress went back: $reports"
        }
        check(reports.all { it.total == total && it.done <= total }) { "$what: totals $reports" }
        check(reports.last().done == total) { "$what: ended at ${reports.last()}" }
    }
}

fun sha256(file: File): String =
    MessageDigest.getInstance("SHA-256").digest(file.readBytes()).joinToString("") { "%02x".format(it) }

/// A file of `size` random bytes in a fresh temporary directory.
fun randomFile(name: String, size: Int): File {
    val dir = kotlin.io.path.createTempDirectory("qim-media").toFile()
    dir.deleteOnExit()
    return File(dir, name).apply { writeBytes(Random.nextBytes(size)) }
}

suspend fun expectCancelled(what: String, block: suspend () -> Unit) {
    try {
        block()
    } catch (e: QimException.Cancelled) {
        return
    }
    throw AssertionError("$what was not cancelled")
}

/// ada uploads a file with progress and sends it to ben, who downloads it
/// (continuing a partial file) with progress, bytes identical; cancelled
/// uploads and downloads fail with `Cancelled` and the same bytes upload
/// again afterwards; the same bytes again cost no byte sent; eve, whom no
/// message gave the blob, is refused it.
suspend fun media() {
    val (ada, _) = connected("ada", "ada-phone")
    val (ben, benEvents) = connected("ben", "ben-phone")
    val (eve, _) = connected("eve", "eve-phone")

    // Upload from a path, with progress.
    val photo = randomFile("holiday.bin", 4 * 1024 * 1024 + 123)
    val size = photo.length().toULong()
    val progress = Progress()
    val uploaded = ada.uploadFile(photo.path, "application/octet-stream", TransferHandle(), progress)
    check(uploaded.blobId.length == 64 && uploaded.size == size) { "uploaded $uploaded" }
    check(uploaded.name == "holiday.bin" && uploaded.mediaType == "application/octet-stream") { "uploaded $uploaded" }
    progress.checkComplete(size, "upload")
    check(progress.seen.last().sent == size) { "upload sent ${progress.seen.last()}" }

    // Sent as an attachment (the app adds what it knows: dimensions).
    val attachment = uploaded.copy(width = 640u, height = 480u)
    val note = OutgoingMessage("ben", "file", "a file for you".toByteArray(), null)
    val receipt = ada.sendWith(note, MessageExtras(null, listOf(), false, listOf(attachment)))
    val got = benEvents.messages.next("the message with the attachment")
    check(got.msgId == receipt.msgId && got.attachments.size == 1) { "ben got $got" }
    val received = got.attachments[0]
    check(received.blobId == uploaded.blobId && received.size == size) { "received $received" }
    check(received.width == 640u && received.height == 480u && received.name == "holiday.bin") { "received $received" }

    // ben downloads it: the first MiB in memory, then the rest into the file.
    val target = File(photo.parentFile, "downloaded.bin")
    val head = ben.downloadRange(received.blobId, 0uL, 1024uL * 1024uL)
    check(head.size == 1024 * 1024) { "range of ${head.size} bytes" }
    target.writeBytes(head)
    val downloadProgress = Progress()
    val downloaded = ben.download(received.blobId, target.path, TransferHandle(), downloadProgress)
    check(downloaded.size == size && downloaded.mediaType == "application/octet-stream") { "downloaded $downloaded" }
    downloadProgress.checkComplete(size, "download")
    check(downloadProgress.seen.first().done == 1024uL * 1024uL) {
        "the download did not continue the partial file: ${downloadProgress.seen.first()}"
    }
    check(sha256(target) == sha256(photo)) { "downloaded bytes differ" }

    // The same bytes again: the server has them, no chunk is sent.
    val again = TransferHandle()
    val dedup = ada.uploadFile(photo.path, "application/octet-stream", again, null)
    check(dedup.blobId == uploaded.blobId) { "dedup $dedup" }
    check(again.progress().sent == 0uL && again.progress().done == size) { "dedup progress ${again.progress()}" }

    // Cancelled mid-upload: the typed error; the same bytes upload later.
    val big = randomFile("big.bin", 16 * 1024 * 1024)
    val handle = TransferHandle()
    val cancelling = Progress { if (it.sent > 0uL) handle.cancel() }
    expectCancelled("an upload cancelled after its first chunk") {
        ada.uploadFile(big.path, "application/octet-stream", handle, cancelling)
    }
    check(handle.isCancelled() && cancelling.seen.any { it.sent in 1uL until big.length().toULong() }) {
        "cancelled at ${cancelling.seen}"
    }
    val retry = Progress()
    val bigUploaded = ada.uploadBytes(big.readBytes(), "application/octet-stream", TransferHandle(), retry)
    check(bigUploaded.size == big.length().toULong() && bigUploaded.name == "") { "after the cancel: $bigUploaded" }
    retry.checkComplete(big.length().toULong(), "upload after a cancel")

    // A handle cancelled before the call: cancelled at once.
    val early = TransferHandle()
    early.cancel()
    expectCancelled("a download with a cancelled handle") {
        ben.download(received.blobId, File(photo.parentFile, "never.bin").path, early, null)
    }

    // The caller's coroutine cancelled: the transfer stops with it.
    val orphan = TransferHandle()
    val started = CompletableDeferred<Unit>()
    coroutineScope {
        val job = launch {
            ada.uploadFile(
                randomFile("orphan.bin", 16 * 1024 * 1024).path,
                "application/octet-stream",
                orphan,
                Progress { if (it.total > 0uL) started.complete(Unit) },
            )
        }
        withTimeout(PATIENCE_MS) { started.await() }
        job.cancelAndJoin()
    }
    check(orphan.isCancelled()) { "a cancelled coroutine left its upload running" }

    // eve: no message gave her the blob.
    expectRejected("PERMISSION_DENIED", "eve's download of ada's file") {
        eve.download(uploaded.blobId, File(photo.parentFile, "stolen.bin").path, TransferHandle(), null)
    }
    expectRejected("PERMISSION_DENIED", "eve's range of ada's file") {
        eve.downloadRange(uploaded.blobId, 0uL, 16uL)
    }
    check(!File(photo.parentFile, "stolen.bin").exists() || File(photo.parentFile, "stolen.bin").length() == 0L) {
        "eve got bytes"
    }

    eve.disconnect()
    ben.disconnect()
    ada.disconnect()
}

/// First process, offline: an upload is journalled in the data directory,
/// and the process stops before it can finish.
suspend fun mediaPendingWrite() {
    val file = File(env("QIM_MEDIA_FILE"))
    file.writeBytes(Random.nextBytes(2 * 1024 * 1024))
    val ada = QimClient(options("ada", "ada-laptop", dataDir = env("QIM_DATA_DIR")))
    ada.start()
    val journalled = CompletableDeferred<Unit>()
    coroutineScope {
        val job = launch {
            // The total is reported once the upload is journalled.
            ada.uploadFile(file.path, "application/octet-stream", TransferHandle(), Progress { journalled.complete(Unit) })
        }
        withTimeout(PATIENCE_MS) { journalled.await() }
        val pending = ada.pendingUploads()
        check(pending.size == 1 && pending[0].path == file.path) { "pending $pending" }
        // The process stops with the upload unfinished (no cancel, no close).
        Runtime.getRuntime().halt(0)
        job.join()
    }
}

/// Second process, online, same data directory: the unfinished upload is
/// listed, resumed with progress, and then no longer pending.
suspend fun mediaPendingResume() {
    val file = File(env("QIM_MEDIA_FILE"))
    val ada = QimClient(options("ada", "ada-laptop", dataDir = env("QIM_DATA_DIR")))
    ada.connect()
    val pending = ada.pendingUploads()
    check(pending.size == 1 && pending[0].path == file.path && pending[0].mediaType == "application/octet-stream") {
        "pending $pending"
    }
    val progress = Progress()
    val uploaded: Attachment = ada.resumeUpload(pending[0], TransferHandle(), progress)
    check(uploaded.blobId == pending[0].blobId && uploaded.size == file.length().toULong()) { "resumed $uploaded" }
    progress.checkComplete(file.length().toULong(), "resumed upload")
    val left = ada.pendingUploads()
    check(left.isEmpty()) { "still pending: $left" }
    ada.disconnect()
}
