import TollgateProxy
import TollgateStore

#if canImport(Glibc)
    import Glibc
#endif

/// The `tollgate` command line: picks the subcommand and turns its failures into one line on
/// standard error and a non-zero exit status.
enum Command {
    static let usage = """
        usage: tollgate <command> [options]

        commands:
          serve      run the FastCGI worker pool behind nginx (tollgate serve --help)
          help       show this text
        \(AdminCommand.summary)

        """

    static func run(_ arguments: [String]) -> Int32 {
        let command = arguments.dropFirst().first ?? "help"
        let rest = Array(arguments.dropFirst(2))
        if let status = AdminCommand.run(command, rest) { return status }
        switch command {
        case "serve":
            if rest.contains("--help") || rest.contains("-h") { return printOut(ServeSettings.usage) }
            return serve(rest)
        case "worker":
            return worker()
        case "help", "--help", "-h":
            return printOut(usage)
        default:
            return fail("unknown command '\(command)' (see tollgate help)")
        }
    }

    private static func serve(_ arguments: [String]) -> Int32 {
        do {
            let settings = try ServeSettings.resolve(arguments: arguments, environment: ProcessEnvironment.current())
            Log.minimumLevel = settings.logLevel
            let socket = try ListeningSocket.open(settings.socket, mode: settings.socketMode)
            var environment = ProcessEnvironment.current()
            environment.merge(settings.fileEntries) { $1 }
            let registry = try StoreMaintenance.fromEnvironment(environment)
            return Supervisor(settings: settings, arguments: arguments, socket: socket, registry: registry).run()
        } catch {
            return fail(String(describing: error))
        }
    }

    private static func worker() -> Int32 {
        let environment = ProcessEnvironment.current()
        do {
            let settings = try ServeSettings.resolve(arguments: [], environment: environment)
            Log.minimumLevel = settings.logLevel
            return WorkerProcess.run(settings: settings, index: environment["TOLLGATE_WORKER_INDEX"] ?? "?")
        } catch {
            return fail(error.description)
        }
    }

    static func printOut(_ text: String) -> Int32 {
        print(text, terminator: "")
        return 0
    }

    static func fail(_ message: String) -> Int32 {
        var line = Array("tollgate: \(message)\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
        return 2
    }
}

extension StoreMaintenance: WorkerRegistry {}
