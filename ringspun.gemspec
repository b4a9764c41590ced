# frozen_string_literal: true

# Read the version without loading lib/ so that evaluating this file (Bundler does it
# for every `bundle exec`) defines no constants.
version_file = File.join(__dir__, "lib", "ringspun", "version.rb")
version = File.read(version_file)[/VERSION\s*=\s*"([^"]+)"/, 1] or
  raise "no VERSION in #{version_file}"

# Packaged: the extension sources, the Ruby layer, README and LICENSE; never a build product.
# (`rake compile` installs each Ruby's build under lib/ringspun/<abi>/, e.g. 3.4.0.)
packaged = lambda do |path|
  (path.start_with?("ext/", "lib/") || %w[README.md LICENSE].include?(path)) &&
    !path.end_with?(".so", ".o", "/Makefile", "/mkmf.log", "/extconf.h") &&
    !path.match?(%r{\Alib/ringspun/\d[^/]*/|\.so\.tmp\d+\z}) &&
    File.file?(path)
end

files = Dir.chdir(__dir__) do
  in_git = system("git", "rev-parse", "--is-inside-work-tree", out: File::NULL, err: File::NULL)
  listed = in_git ? `git ls-files -z`.split("\x0") : []
  # Outside a git checkout (no git, a tarball, a copied tree): what is on disk.
  listed = Dir.glob("{ext/**/*,lib/**/*,README.md,LICENSE}") if listed.empty?
  listed.select(&packaged).sort
end

Gem::Specification.new do |spec|
  spec.name     = "ringspun"
  spec.version  = version
  spec.authors  = ["Ringspun developers"]
  spec.license  = "MIT"
  spec.summary  = "Fiber-based IO on io_uring: splice, gzip, MessagePack feeding, chunked HTTP"
  spec.description = <<~DESC.tr("\n", " ").strip
    Ringspun is a Fiber::Scheduler for Linux on io_uring, with an epoll fallback chosen at
    run time, plus zero-copy and streaming IO primitives: splice, tee and double_splice
    between files, pipes and sockets; streaming gzip/gunzip/deflate/inflate; read and feed
    loops with native MessagePack feeding; and chunked HTTP/1.1 splicing. Stdlib IO,
    Queue, Mutex and sleep run on it unchanged.
  DESC

  spec.required_ruby_version = ">= 3.1"
  spec.files         = files
  spec.require_paths = ["lib"]
  spec.extensions    = ["ext/ringspun/extconf.rb"]

  # liburing, zlib and msgpack-c are system libraries, found by extconf.rb:
  #   apt-get install liburing-dev zlib1g-dev libmsgpack-dev pkg-config
  spec.requirements = ["liburing >= 2.2", "zlib", "msgpack-c", "pkg-config"]
end
