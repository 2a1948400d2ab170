#!/usr/bin/env ruby
# frozen_string_literal: true

# The forge's side of the differential oracle in tests/oracle.rs (issue 4, "Proof against the
# forge's parser"). It reads one request per line on stdin and prints, one JSON line each,
# what GitLab would see in it:
#
# - every token-like value the forge reads, with Rack's own parser (Rack 2.2, as Rails uses
#   it) doing the parameter work: `Rack::Request#GET` (query split on `&` and `;`) and `#POST`
#   (urlencoded and multipart bodies, exactly as Rack decides to parse them), Rails' JSON
#   params parser for the JSON media types, and Grape's own JSON body parsing on API paths;
#   then the reads of `lib/gitlab/auth/auth_finders.rb`, `lib/gitlab/api_authentication/
#   token_locator.rb`, Doorkeeper's `access_token_methods` and Rails'
#   `ActionController::HttpAuthentication` (Basic and Token), written out below;
# - the project reference the forge routes on: Grape's `:id` in `/api/v4/projects/:id/...`
#   (decoded once, as Mustermann decodes captures, then read as `find_project` reads it) and
#   the repository path of the Git routes in config/routes/git_http.rb (read as
#   `Gitlab::RepoPath.parse` reads it).
#
# Input line:  {"id": N, "method": "POST", "path": "/raw/path", "query": "raw" | null,
#               "headers": [["Name", "<base64 value>"], ...], "body": "<base64>"}
# Output line: {"id": N, "method": "<after Rack::MethodOverride>",
#               "tokens": [{"src": "where it was read", "b64": "<value>"}, ...],
#               "errors": ["what the forge could not parse", ...],
#               "route": null | {"kind": "api", "id_b64": ..., "ref": REF}
#                             | {"kind": "git" | "git-redirect", "repo_b64": ..., "refs": [REF...]}}
#   with "write": whether the route, run with the method after Rack::MethodOverride, writes
#   (true/false; null where it reaches no action), and for an LFS batch "lfs_operation", the
#   `params[:operation]` LfsApiController reads
#   REF: {"id": N} | {"path_b64": "..."} | null (the forge finds no project)
#
# Only what this file can know offline is modelled: no database (a reference is reported, not
# resolved), no per-route `authenticate_with` settings (every slot is read on every path, a
# superset), no Workhorse. Values are reported byte for byte (base64), never interpreted.

require 'base64'
require 'json'
require 'stringio'
require 'rack'

module RackOracle
  # `AuthFinders::PARAM_TOKEN_KEYS`, Doorkeeper's `from_access_token_param` /
  # `from_bearer_param`, `TokenLocator`'s `*_param` locations.
  TOKEN_PARAMS = %w[job_token token private_token access_token bearer_token].freeze
  # `AuthFinders::HEADER_TOKEN_KEYS`, plus NuGet's `sent_through(http_header: 'X-NuGet-ApiKey')`.
  TOKEN_HEADERS = %w[HTTP_JOB_TOKEN HTTP_PRIVATE_TOKEN HTTP_DEPLOY_TOKEN HTTP_X_NUGET_APIKEY].freeze
  # Rails registers `application/json` with the synonyms `text/x-json` and
  # `application/jsonrequest`; GitLab's config/initializers/mime_types.rb re-registers it with
  # `application/vnd.git-lfs+json`. The union is modelled.
  JSON_MEDIA_TYPES = %w[
    application/json application/vnd.git-lfs+json text/x-json application/jsonrequest
  ].freeze
  # Grape parses bodies itself on these methods (`Grape::Middleware::Formatter#read_body_input`).
  GRAPE_BODY_METHODS = %w[POST PUT PATCH DELETE].freeze

  # --- Puma ----------------------------------------------------------------------------------

  # The Rack env Puma builds: `HTTP_` + upper-cased name with `-` as `_`, repeated fields
  # joined with ", " (Puma's parser), Content-Type/-Length without the prefix.
  def self.env_for(req)
    body = Base64.strict_decode64(req.fetch('body', ''))
    env = {
      'REQUEST_METHOD' => req.fetch('method'),
      'SCRIPT_NAME' => '',
      'PATH_INFO' => req.fetch('path'),
      'QUERY_STRING' => req['query'] || '',
      'SERVER_NAME' => 'forge.test',
      'SERVER_PORT' => '80',
      'SERVER_PROTOCOL' => 'HTTP/1.1',
      'rack.url_scheme' => 'http',
      'rack.input' => StringIO.new(body.b),
      'rack.errors' => StringIO.new,
      'rack.version' => [1, 3],
      'rack.multithread' => false,
      'rack.multiprocess' => false,
      'rack.run_once' => false
    }
    fields = []
    req.fetch('headers', []).each do |name, b64|
      value = Base64.strict_decode64(b64)
      key = name.upcase.tr('-', '_')
      key = "HTTP_#{key}" unless %w[CONTENT_TYPE CONTENT_LENGTH].include?(key)
      fields << [key, value, name]
      env[key] = env.key?(key) ? "#{env[key]}, #{value}" : value
    end
    env['CONTENT_LENGTH'] = body.bytesize.to_s unless body.empty? && !env.key?('CONTENT_LENGTH')
    [env, fields, body]
  end

  # --- what is read --------------------------------------------------------------------------

  class Found
    attr_reader :tokens, :errors
    # Rails' `query_parameters` and `request_parameters` (JSON or Rack's POST).
    attr_accessor :rails_query, :rails_body

    def initialize
      @tokens = []
      @errors = []
      @seen = {}
    end

    # One value the forge reads, and what it implies (JWT claims, the JWT as verified).
    def add(src, value, depth = 0)
      return unless value.is_a?(String)

      bytes = value.b
      return if @seen[bytes]

      @seen[bytes] = true
      @tokens << { 'src' => src, 'b64' => Base64.strict_encode64(bytes) }
      return if depth > 2

      if (agent = bytes.match(/\Aci:(\d+):(.+)\z/m))
        add("#{src} (agent)", agent[2], depth + 1)
      end
      RackOracle.jwt_reads(bytes).each do |what, v|
        add("#{src} (jwt #{what})", v, depth + 1)
      end
    end

    # Every string leaf of a parameter value: a String as is; Arrays and Hashes (`job_token[]`,
    # `job_token[x]`) leaf by leaf, a superset of the forge's `.to_s`; uploaded files skipped.
    def add_param(src, value, depth = 0)
      return if depth > 32

      case value
      when String then add(src, value)
      when Integer, TrueClass, FalseClass then add(src, value.to_s)
      when Array then value.each { |v| add_param(src, v, depth + 1) }
      when Hash
        return if value.key?(:tempfile) || value.key?('tempfile')

        value.each_value { |v| add_param(src, v, depth + 1) }
      end
    end

    def add_params(src, hash)
      return unless hash.is_a?(Hash)

      TOKEN_PARAMS.each do |k|
        add_param("#{src} #{k}", hash[k]) if hash.key?(k)
      end
    end

    def error(what)
      @errors << what
    end
  end

  # The jwt gem's `JWT::Base64.url_decode` (strict first, then the lenient fallback: padding
  # added, `-_` read as `+/`, then Ruby's `Base64.decode64`, which skips foreign characters).
  def self.jwt_decode64(segment)
    Base64.urlsafe_decode64(segment)
  rescue ArgumentError
    s = segment.dup
    s += '=' * (4 - (s.length % 4)) if (s.length % 4) != 0
    Base64.decode64(s.tr('-_', '+/'))
  end

  # What a JWT-shaped value gives the forge: the `token`/`access_token` string claims
  # (Terraform and Conan JWTs wrap a job token: `TokenResolver#job_token_from_jwt`,
  # `Gitlab::ConanToken`) and, for a job token that is itself a JWT
  # (`Authn::Tokens::Jwt.rsa_decode`, prefix `glcbt-`), the token as the forge verifies it:
  # header and payload as sent, the signature as the lenient decoder reads it. `JWT.decode`
  # splits on '.' with Ruby's `split`, which drops trailing empty segments, and needs three.
  def self.jwt_reads(value)
    out = []
    segments = value.split('.')
    return out unless segments.size == 3

    header, payload, signature = segments
    unprefixed = header.sub(/\Aglcbt-/, '')
    begin
      h = JSON.parse(jwt_decode64(unprefixed).force_encoding('UTF-8'))
      claims = JSON.parse(jwt_decode64(payload).force_encoding('UTF-8'))
    rescue JSON::ParserError, EncodingError, ArgumentError
      return out
    end
    return out unless h.is_a?(Hash) && claims.is_a?(Hash)

    %w[token access_token].each do |claim|
      out << ["claim #{claim}", claims[claim]] if claims[claim].is_a?(String)
    end
    sig = jwt_decode64(signature)
    unless sig.empty?
      clean = Base64.urlsafe_encode64(sig, padding: false)
      out << ['as verified', "#{header}.#{payload}.#{clean}"]
    end
    out
  end

  # --- headers -------------------------------------------------------------------------------

  def self.read_headers(env, fields, found)
    TOKEN_HEADERS.each do |key|
      found.add("env #{key}", env[key]) if env[key]
      # Puma 6.4.3+ drops an underscore spelling when a dashed one is also present, so the
      # forge may read a join of only some fields; each field on its own is reported too.
      mine = fields.select { |k, _| k == key }
      mine.each { |_, v| found.add("field #{key}", v) }
      dashed = mine.reject { |_, _, name| name.include?('_') }
      if !dashed.empty? && dashed.size < mine.size
        found.add("env #{key} (Puma 6.4.3+)", dashed.map { |_, v| v }.join(', '))
      end
    end
    auths = [env['HTTP_AUTHORIZATION']].compact
    fields.select { |k, _| k == 'HTTP_AUTHORIZATION' }.each { |_, v| auths << v }
    auths.uniq.each { |a| read_authorization(a, found) }
  end

  def self.read_authorization(auth, found)
    return if auth.strip.empty? # `.present?`

    # TokenLocator#http_token: the whole value.
    found.add('Authorization (whole)', auth)
    # TokenLocator#http_bearer_token: `split(' ').last`.
    found.add('Authorization (last word)', auth.split(' ').last)
    # Doorkeeper `from_bearer_authorization`: `header.gsub(/^Bearer /i, '')` when it matches.
    found.add('Authorization (Doorkeeper bearer)', auth.gsub(/^Bearer /i, '')) if auth.match?(/^Bearer /i)
    # ActionController::HttpAuthentication::Token#token_and_options.
    if (token = rails_token(auth))
      found.add('Authorization (Rails token)', token)
    end
    # ActionController::HttpAuthentication::Basic#user_name_and_password, used by
    # TokenLocator#http_basic_auth without looking at the scheme, and by AuthFinders.
    _user, password = Base64.decode64(auth.split(' ', 2)[1] || '').split(':', 2)
    found.add('Authorization (Basic password)', password) if password
  end

  # Rails 7 `token_and_options`, step by step.
  def self.rails_token(auth)
    return unless auth[/^(Token|Bearer)\s+/]

    raw = auth.sub(/^(Token|Bearer)\s+/, '').split(/(?:,|;|\t)/).map(&:strip)
    raw.reject!(&:empty?)
    raw[0] = "token=#{raw.first}" unless raw.first&.start_with?('token=')
    params = raw.map { |param| param.split(/=(.+)?/) }
    params.each { |param| (param[1] || +'').gsub!(/^"|"$/, '') }
    params.first&.[](1)
  end

  # --- parameters ----------------------------------------------------------------------------

  def self.read_params(env, body, path, found)
    req = Rack::Request.new(env)
    begin
      found.add_params('query', found.rails_query = req.GET)
    rescue StandardError => e
      found.error("query: #{e.class}")
    end
    begin
      found.add_params('body (Rack)', found.rails_body = req.POST)
    rescue StandardError => e
      found.error("body (Rack): #{e.class}")
    end

    media = req.media_type
    # Rails' `parse_formatted_parameters`: `content_length.zero?` or no JSON media type → Rack.
    # `content_mime_type` reads `/^([^,;]*)/`, stripped on both sides and down-cased.
    rails_media = env['CONTENT_TYPE'].to_s[/^([^,;]*)/, 1].to_s.strip.downcase
    if !body.empty? && JSON_MEDIA_TYPES.include?(rails_media)
      found.rails_body = parse_json(body, 'body (Rails JSON)', found)
    end
    # Grape's Formatter: on API paths, POST/PUT/PATCH/DELETE bodies that are not forms are
    # parsed by media type, and a body with no media type by the endpoint's `default_format`
    # (`:json` in Terraform state and the other APIs that declare it). Hash bodies are merged
    # into the params every reader sees.
    return unless path.start_with?('/api/')
    return unless GRAPE_BODY_METHODS.include?(env['REQUEST_METHOD'])
    return if body.empty? || (req.form_data? && media) || req.parseable_data?
    return unless media.nil? || media == 'application/json'

    parse_json(body, 'body (Grape JSON)', found, lenient: true)
  end

  def self.parse_json(body, src, found, lenient: false)
    text = body.dup.force_encoding('UTF-8')
    # Grape loads with `JSON.load`-like options (NaN allowed); Rails with `JSON.parse`.
    data = JSON.parse(text, allow_nan: lenient, max_nesting: 100)
    found.add_params(src, data) if data.is_a?(Hash)
    data.is_a?(Hash) ? data : { '_json' => data }
  rescue JSON::ParserError, EncodingError, ArgumentError => e
    found.error("#{src}: #{e.class}")
    nil
  end

  # --- routing -------------------------------------------------------------------------------

  # `Journey::Router::Utils.normalize_path` (Rails' RouteSet#call, before the API mount at
  # '/'), which Grape's own router repeats: `/` squeezed, trailing `/` dropped.
  def self.normalize_path(path)
    p = "/#{path}".squeeze('/')
    p = p.sub(%r{/+\z}, '')
    p.empty? ? '/' : p
  end

  # Mustermann decodes a capture with `URI::RFC2396_Parser#unescape`: each `%XX` with two hex
  # digits, anything else kept; `+` stays `+`.
  def self.unescape(s)
    s.b.gsub(/%[a-fA-F\d]{2}/n) { |m| [m[1, 2]].pack('H2') }
  end

  # `API::Helpers#find_project` (now `Gitlab::ResourceLookup#lookup_project`):
  # `INTEGER_ID_REGEX = /^-?\d+$/` (line anchors!), then `find_by(id:)`, which casts with
  # `to_i`; otherwise a path when it holds a '/'.
  def self.project_ref(id)
    text = id.dup.force_encoding('UTF-8')
    return nil unless text.valid_encoding?

    if text.match?(/^-?\d+$/)
      n = text.to_i
      n.positive? && n < 2**63 ? { 'id' => n } : nil
    elsif text.include?('/')
      { 'path_b64' => Base64.strict_encode64(id.b) }
    end
  end

  NS = '(?:[a-zA-Z0-9_.][a-zA-Z0-9_\-.]{0,254}[a-zA-Z0-9_\-]|[a-zA-Z0-9_])(?<!\.git|\.atom)'
  # `Gitlab::PathRegex::TOP_LEVEL_ROUTES` (the older, shorter list: a root namespace it does
  # not exclude only adds routes to check).
  TOP_LEVEL = %w[
    - .well-known 404.html 422.html 500.html 502.html 503.html abuse_reports admin api
    apple-touch-icon-precomposed.png apple-touch-icon.png assets autocomplete ci dashboard
    deploy.html explore favicon.ico files groups header_logo_dark.png header_logo_light.png
    health_check help import invites jwt koding notification_settings oauth profile projects
    public robots.txt s search sent_notifications slash-command-logo.png snippets u
    unsubscribes uploads users
  ].map { |w| Regexp.escape(w) }.join('|')
  GROUP_ILLEGAL = %w[- badges blame blob builds commits create create_dir edit files
                     find_file gitlab-lfs/objects info/lfs/objects new preview raw refs
                     tree update wikis].map { |w| Regexp.escape(w) }.join('|')
  # `Gitlab::PathRegex.full_namespace_route_regex`, then `repository_route_regex` (`\.*`) and
  # `repository_git_route_regex` (`\.git`).
  FULL_NS = "(?!(?:#{TOP_LEVEL})/)#{NS}(?:/(?!(?:#{GROUP_ILLEGAL})/)#{NS})*"
  GIT_ROUTE = %r{\A/(?<repo>#{FULL_NS}\.*\.git)/(?<rest>info/refs|git-upload-pack|git-receive-pack|
                 info/lfs/objects(?:/.*)?|info/lfs/locks(?:/.*)?|
                 gitlab-lfs/objects/[a-f0-9]{64}(?:/.*)?)\z}xi.freeze
  GIT_REDIRECT = %r{\A/(?<repo>#{FULL_NS})/info/refs\z}i.freeze

  # Whether the Git route the method reaches writes: config/routes/git_http.rb's routes and
  # the actions their controllers define (`LfsLocksApiController` has `index`, `create`,
  # `verify` and `unlock`; `resources` routes to the others reach no action). `nil`: no action.
  def self.git_write(method, rest)
    m = method == 'HEAD' ? 'GET' : method
    case rest
    when 'info/refs' then m == 'GET' ? false : nil
    when 'git-upload-pack' then m == 'POST' ? false : nil
    when 'git-receive-pack' then m == 'POST' ? true : nil
    when 'info/lfs/objects/batch' then { 'POST' => true, 'GET' => false }[m] # see `answer`
    when 'info/lfs/objects' then m == 'POST' ? false : nil
    when %r{\Ainfo/lfs/objects/.} then m == 'GET' ? false : nil
    when 'info/lfs/locks' then { 'GET' => false, 'POST' => true }[m]
    when 'info/lfs/locks/verify' then m == 'POST' ? false : nil
    when %r{\Ainfo/lfs/locks/[^/]+/unlock\z} then m == 'POST' ? true : nil
    when %r{\Agitlab-lfs/objects/[a-f0-9]{64}\z} then m == 'GET' ? false : nil
    when %r{\Agitlab-lfs/objects/[a-f0-9]{64}/[0-9]+(/authorize)?\z} then m == 'PUT' ? true : nil
    end
  end

  def self.route(path, method)
    norm = normalize_path(path)
    segments = norm.split('/', -1).drop(1)
    if segments.size >= 4 && segments[0..2].map { |s| unescape(s) } == %w[api v4 projects] &&
       !segments[3].empty?
      id = unescape(segments[3])
      return { 'kind' => 'api', 'id_b64' => Base64.strict_encode64(id), 'ref' => project_ref(id),
               'write' => !%w[GET HEAD].include?(method) }
    end
    if (m = GIT_ROUTE.match(norm))
      # The route regex is case-sensitive; matching it case-insensitively reports more.
      repo = m[:repo].sub(/\.git\z/i, '')
      refs = [repo]
      refs << repo.sub(/\.(wiki|design)\z/i, '') if repo.match?(/\.(wiki|design)\z/i)
      return git_route('git', repo, refs).merge('write' => git_write(method, m[:rest]),
                                                'rest' => m[:rest])
    end
    if (m = GIT_REDIRECT.match(norm))
      return git_route('git-redirect', m[:repo], [m[:repo]]).merge('write' => false)
    end

    nil
  end

  def self.git_route(kind, repo, refs)
    {
      'kind' => kind,
      'repo_b64' => Base64.strict_encode64(repo.b),
      'refs' => refs.map { |r| { 'path_b64' => Base64.strict_encode64(r.b) } }
    }
  end

  # --- one request ---------------------------------------------------------------------------

  def self.answer(req)
    env, fields, body = env_for(req)
    found = Found.new
    # Rack::MethodOverride (in Rails' default stack) runs first: a POST may become another
    # method for routing and for Grape's body parsing.
    override_env = env.merge('rack.input' => StringIO.new(body.b))
    Rack::MethodOverride.new(->(_) {}).call(override_env)
    method = override_env['REQUEST_METHOD']
    env['REQUEST_METHOD'] = method
    if override_env.key?('rack.methodoverride.original_method')
      env['rack.methodoverride.original_method'] = override_env['rack.methodoverride.original_method']
    end
    read_headers(env, fields, found)
    read_params(env, body, req.fetch('path'), found)
    route = route(req.fetch('path'), method)
    if route && route['rest'] == 'info/lfs/objects/batch'
      # LfsApiController#batch reads `params[:operation]`; Rails' `params` is
      # `request_parameters.merge(query_parameters)`: the query wins.
      params = (found.rails_body || {}).merge(found.rails_query || {})
      route['lfs_operation'] = params['operation'].is_a?(String) ? params['operation'] : nil
      route['write'] = { 'download' => false, 'upload' => true }[route['lfs_operation']] if method == 'POST'
    end
    {
      'id' => req['id'],
      'method' => method,
      'tokens' => found.tokens,
      'errors' => found.errors,
      'route' => route
    }
  end
end

if $PROGRAM_NAME == __FILE__
  $stdout.sync = true
  $stdout.puts(JSON.generate('rack' => Rack.release, 'ruby' => RUBY_VERSION))
  $stdin.each_line do |line|
    next if line.strip.empty?

    req = JSON.parse(line)
    out = begin
      RackOracle.answer(req)
    rescue StandardError => e
      { 'id' => req['id'], 'fatal' => "#{e.class}: #{e.message}"[0, 300] }
    end
    $stdout.puts(JSON.generate(out))
  end
end
