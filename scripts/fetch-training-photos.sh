#!/usr/bin/env bash
# Fetches freely licensed photographs from Debian wallpaper packages for training and
# evaluation, and writes or verifies their manifest.
#
#   scripts/fetch-training-photos.sh                    # fetch what is missing, verify manifest
#   scripts/fetch-training-photos.sh --update-manifest  # fetch, then rewrite the manifest
#
# Photos go to data/photos/<package>/ (override with PHOTOS_DIR), each package's
# copyright file (and per-image attribution where the package has one) beside them.
# Packages from Debian suites other than this machine's are fetched with a private apt
# state under data/.apt, pointed at the same mirror as the system's sources, so the
# system's apt configuration is never touched. Nothing is installed.
#
# Only photographs are kept: every package also ships rendered or abstract artwork,
# which is left out by the explicit per-package lists below. The manifest
# (scripts/training-photos.manifest.tsv) records file, package, licence, sha256 and
# whether the photo is held out from training (whole photos, for evaluation).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${PHOTOS_DIR:-$ROOT/data/photos}"
APT_PRIV="${APT_PRIVATE_DIR:-$ROOT/data/.apt}"
MANIFEST="$ROOT/scripts/training-photos.manifest.tsv"
MIN_SHORT_SIDE=1000 # pixels; smaller images are thumbnails/previews

UPDATE_MANIFEST=0
for arg in "$@"; do
    case "$arg" in
        --update-manifest) UPDATE_MANIFEST=1 ;;
        -h | --help)
            sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

log() { echo "[fetch-photos] $*" >&2; }
die() {
    echo "[fetch-photos] error: $*" >&2
    exit 1
}

for tool in apt-get dpkg-deb sha256sum file; do
    command -v "$tool" >/dev/null || die "'$tool' is required"
done

# ---------------------------------------------------------------------------------------
# What to fetch. Per package: suite, version pin (empty: the suite's candidate), and the
# photographs to keep as "path-inside-package<TAB>licence". Licences are those stated for
# the file in the package's copyright/AUTHORS/metadata; "package:" marks a package-wide
# statement where no per-file entry exists.
# ---------------------------------------------------------------------------------------
PACKAGES=(budgie-backgrounds lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds
    plasma-workspace-wallpapers gnome-backgrounds)

declare -A SUITE=(
    [budgie-backgrounds]=trixie
    [lomiri-wallpapers-16.04]=bookworm
    [lomiri-wallpapers-20.04]=bookworm
    [mate-backgrounds]=bookworm
    [plasma-workspace-wallpapers]=bookworm
    [gnome-backgrounds]=bullseye
)
declare -A VERSION_PIN=(
    [gnome-backgrounds]=3.38.0-1
)
# Attribution files copied next to the photos (besides usr/share/doc/<pkg>/copyright).
declare -A EXTRA_DOCS=(
    [gnome-backgrounds]="usr/share/doc/gnome-backgrounds/AUTHORS"
)

keep_list() {
    case "$1" in
        budgie-backgrounds)
            # Left out: ocean-waves (scan of a woodblock print), valley-midnight and
            # waves-midnight (vector art).
            for f in abstract-spiral beacon-street-sunset blue-periwinkle canyon-wren casa-mila \
                extreme-desert-hike high-trestle-trail lake-sherburne oakland-zoo-otters \
                perched-osprey piazza-gae-aulenti roman-colosseum saturnian-profile \
                singaporean-cityscape tea-gardens; do
                printf 'usr/share/backgrounds/budgie/%s.jpg\tCC0-1.0\n' "$f"
            done
            ;;
        lomiri-wallpapers-16.04)
            # Left out: umang_by_Abhishek_Mudgal (digital art).
            local d=usr/share/backgrounds
            printf '%s\n' \
                "$d/Bridge_by_Sander_Klootwijk.jpg	CC-BY-SA-4.0" \
                "$d/Dragonfly_by_Bolly.jpg	CC-BY-SA-4.0" \
                "$d/Picture_0B_by_freespace.jpg	CC-BY-4.0" \
                "$d/Picture_1A_by_freespace.jpg	CC-BY-4.0" \
                "$d/Wine_by_Jakkub_Mede.jpg	CC-BY-4.0" \
                "$d/aitzgorri_by_Aitzol_Berasategi.jpg	CC-BY-4.0" \
                "$d/analogpattern_by_Peter_Nerlich.jpg	CC-BY-SA-4.0" \
                "$d/free_by_Peter_Nerlich.jpg	CC-BY-SA-4.0" \
                "$d/friends_by_Aitzol_Berasategi.jpg	CC-BY-4.0" \
                "$d/greentock_by_Peter_Nerlich.jpg	CC-BY-SA-4.0" \
                "$d/life_by_Aitzol_Berasategi.jpg	CC-BY-4.0" \
                "$d/picosdeeuropa_by_Aitzol_Berasategi.jpg	CC-BY-4.0" \
                "$d/seeding_by_Clements_Engelhardt.jpg	CC0-1.0" \
                "$d/sunset_by_Aitzol_Berasategi.jpg	CC-BY-4.0"
            ;;
        lomiri-wallpapers-20.04)
            # Left out: Fossa, Infinite-Sea, Painting-Colors (rendered/digital art).
            printf 'usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg\tCC-BY-SA-3.0\n'
            ;;
        mate-backgrounds)
            # nature/ only; abstract/ and desktop/ are artwork.
            for f in Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm \
                TwoWings Wood YellowFlower; do
                printf 'usr/share/backgrounds/mate/nature/%s.jpg\tGPL-2+\n' "$f"
            done
            ;;
        plasma-workspace-wallpapers)
            # Photographic wallpapers only (largest size of each); the others are
            # rendered. Licence as stated in each wallpaper's metadata.json.
            for f in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey \
                Kite OneStandsOut Path summer_1am; do
                printf 'usr/share/wallpapers/%s/contents/images/2560x1600.jpg\tLGPL-3.0\n' "$f"
            done
            ;;
        gnome-backgrounds)
            # Left out: adwaita-*, Endless-shapes, Stripes, Symbolics-* (rendered), VNC.png.
            local d=usr/share/backgrounds/gnome
            printf '%s\n' \
                "$d/Acrylic.jpg	CC0-1.0" \
                "$d/ColdWarm.jpg	CC0-1.0" \
                "$d/Dark_Ivy.jpg	CC-BY-SA-3.0" \
                "$d/Icetwigs.jpg	package:GPL-2+/CC-BY-SA-3.0" \
                "$d/LightWaves.jpg	CC0-1.0" \
                "$d/Road.jpg	CC0-1.0" \
                "$d/SeaSunset.jpg	CC0-1.0" \
                "$d/Wood.jpg	CC-BY-SA-3.0"
            ;;
        *) die "no keep list for $1" ;;
    esac
}

# Stored name of a kept file inside data/photos/<package>/.
stored_name() {
    local pkg="$1" path="$2"
    case "$pkg" in
        # Every plasma wallpaper's image is named after its resolution.
        plasma-workspace-wallpapers)
            local wp="${path#usr/share/wallpapers/}"
            wp="${wp%%/*}"
            echo "${wp}_$(basename "$path")"
            ;;
        *) basename "$path" ;;
    esac
}

# Held out from training: whole photos, chosen to span landscape, city, macro, people
# and animals, portrait orientation, dusk light.
HOLDOUT=(
    budgie-backgrounds/lake-sherburne.jpg
    budgie-backgrounds/singaporean-cityscape.jpg
    mate-backgrounds/LadyBird.jpg
    plasma-workspace-wallpapers/EveningGlow_2560x1600.jpg
    lomiri-wallpapers-16.04/friends_by_Aitzol_Berasategi.jpg
)

# ---------------------------------------------------------------------------------------
# apt plumbing
# ---------------------------------------------------------------------------------------
HOST_SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"

# The Debian mirror the system uses for its own suite (one-line or deb822 sources).
find_mirror() {
    local f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri="$(awk -v s="$HOST_SUITE" '
            $1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                          if ($(i+1) == s) { print $i; exit } }' "$f")"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri="$(awk -v s="$HOST_SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                u = ""; ok = 0; deb = 0
                for (k = 1; k <= NF; k++) {
                    if ($k ~ /^Types:/ && $k ~ /(^|[ \t])deb([ \t]|$)/) deb = 1
                    if ($k ~ /^URIs:/) { split($k, a, /[ \t]+/); u = a[2] }
                    if ($k ~ /^Suites:/) { n = split($k, b, /[ \t]+/); for (j = 2; j <= n; j++) if (b[j] == s) ok = 1 }
                }
                if (deb && ok && u != "") { print u; exit }
            }' "$f")"
        [ -n "$uri" ] && { echo "$uri"; return; }
    done
    echo "http://deb.debian.org/debian"
}

PRIV_READY=0
APT_PRIV_OPTS=()
setup_private_apt() {
    [ "$PRIV_READY" = 1 ] && return
    local mirror suites s keyring
    mirror="$(find_mirror)"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$keyring" ] || die "$keyring not found (package debian-archive-keyring)"
    mkdir -p "$APT_PRIV/state/lists/partial" "$APT_PRIV/cache/archives/partial" \
        "$APT_PRIV/etc/sources.list.d" "$APT_PRIV/etc/preferences.d"
    suites="$(printf '%s\n' "${SUITE[@]}" | sort -u)"
    : >"$APT_PRIV/etc/sources.list.new"
    for s in $suites; do
        echo "deb [signed-by=$keyring] $mirror $s main" >>"$APT_PRIV/etc/sources.list.new"
    done
    mv "$APT_PRIV/etc/sources.list.new" "$APT_PRIV/etc/sources.list"
    APT_PRIV_OPTS=(
        -o "Dir::State=$APT_PRIV/state"
        -o "Dir::State::status=/var/lib/dpkg/status"
        -o "Dir::Etc::SourceList=$APT_PRIV/etc/sources.list"
        -o "Dir::Etc::SourceParts=$APT_PRIV/etc/sources.list.d"
        -o "Dir::Etc::Preferences=$APT_PRIV/etc/preferences"
        -o "Dir::Etc::PreferencesParts=$APT_PRIV/etc/preferences.d"
        -o "Dir::Cache=$APT_PRIV/cache"
        -o "APT::Sandbox::User=root"
    )
    log "private apt state in $APT_PRIV (mirror $mirror; suites: $(echo $suites))"
    apt-get "${APT_PRIV_OPTS[@]}" -q update >&2 || die "apt-get update (private state) failed"
    PRIV_READY=1
}

# Downloads the .deb of $1 into directory $2.
download_deb() {
    local pkg="$1" dir="$2" spec="$1"
    [ -n "${VERSION_PIN[$pkg]:-}" ] && spec="$pkg=${VERSION_PIN[$pkg]}"
    if [ "${SUITE[$pkg]}" = "$HOST_SUITE" ] && [ -z "${VERSION_PIN[$pkg]:-}" ] &&
        apt-cache show "$pkg" >/dev/null 2>&1; then
        (cd "$dir" && apt-get -q -o APT::Sandbox::User=root download "$spec" >&2) && return
        log "system apt could not download $pkg; trying the private state"
    fi
    setup_private_apt
    (cd "$dir" && apt-get "${APT_PRIV_OPTS[@]}" -q download "$spec" >&2) ||
        die "could not download $spec (suite ${SUITE[$pkg]})"
}

# Short side in pixels of an image, from file(1); empty if unknown.
short_side() {
    file -b "$1" | grep -oE '(^|[ ,])[0-9]+ ?x ?[0-9]+(,|$)' | tail -1 |
        tr -d ' ,' | awk -Fx '{ print ($1 < $2) ? $1 : $2 }'
}

# ---------------------------------------------------------------------------------------
# fetch
# ---------------------------------------------------------------------------------------
mkdir -p "$DEST"
WORK_DIRS=()
NEW_MANIFEST=""
cleanup() {
    local d
    for d in "${WORK_DIRS[@]}"; do rm -rf "$d"; done
    [ -n "$NEW_MANIFEST" ] && rm -f "$NEW_MANIFEST"
    return 0
}
trap cleanup EXIT

fetch_package() {
    local pkg="$1" outdir="$DEST/$1" work path lic name n=0 ss ext
    if [ -f "$outdir/.complete" ]; then
        log "$pkg: already present"
        return
    fi
    work="$(mktemp -d "${TMPDIR:-/tmp}/fetch-photos.XXXXXX")"
    WORK_DIRS+=("$work")
    log "$pkg: downloading (${SUITE[$pkg]})"
    download_deb "$pkg" "$work"
    local deb
    deb="$(ls "$work"/*.deb)"
    dpkg-deb -x "$deb" "$work/root"
    rm -rf "$outdir"
    mkdir -p "$outdir"
    while IFS=$'\t' read -r path lic; do
        [ -n "$path" ] || continue
        [ -f "$work/root/$path" ] || die "$pkg: $path not in the package"
        ext="${path##*.}"
        case "${ext,,}" in
            jpg | jpeg | png | webp) ;;
            *) die "$pkg: $path is not a photo format" ;;
        esac
        ss="$(short_side "$work/root/$path")"
        if [ -n "$ss" ] && [ "$ss" -lt "$MIN_SHORT_SIDE" ]; then
            log "$pkg: skipping $path (short side $ss px)"
            continue
        fi
        name="$(stored_name "$pkg" "$path")"
        cp "$work/root/$path" "$outdir/$name"
        printf '%s\t%s\n' "$name" "$lic" >>"$outdir/.licences"
        n=$((n + 1))
    done < <(keep_list "$pkg")
    cp "$work/root/usr/share/doc/$pkg/copyright" "$outdir/copyright"
    for path in ${EXTRA_DOCS[$pkg]:-}; do
        cp "$work/root/$path" "$outdir/"
    done
    if [ "$pkg" = plasma-workspace-wallpapers ]; then
        # Per-wallpaper author and licence.
        while IFS=$'\t' read -r path lic; do
            local wp="${path#usr/share/wallpapers/}"
            wp="${wp%%/*}"
            cp "$work/root/usr/share/wallpapers/$wp/metadata.json" "$outdir/$wp.metadata.json"
        done < <(keep_list "$pkg")
    fi
    dpkg-deb -f "$deb" Package Version >"$outdir/.package"
    touch "$outdir/.complete"
    rm -rf "$work"
    log "$pkg: kept $n photos"
}

for pkg in "${PACKAGES[@]}"; do
    fetch_package "$pkg"
done

# ---------------------------------------------------------------------------------------
# manifest
# ---------------------------------------------------------------------------------------
is_holdout() {
    local h
    for h in "${HOLDOUT[@]}"; do [ "$h" = "$1" ] && return 0; done
    return 1
}

NEW_MANIFEST="$(mktemp)"
new_manifest="$NEW_MANIFEST"
{
    printf 'file\tpackage\tlicence\tsha256\tholdout\n'
    for pkg in "${PACKAGES[@]}"; do
        while IFS=$'\t' read -r name lic; do
            sum="$(sha256sum "$DEST/$pkg/$name" | cut -d' ' -f1)"
            ho=0
            is_holdout "$pkg/$name" && ho=1
            printf '%s\t%s\t%s\t%s\t%s\n' "$pkg/$name" "$pkg" "$lic" "$sum" "$ho"
        done <"$DEST/$pkg/.licences"
    done
} >"$new_manifest"

for h in "${HOLDOUT[@]}"; do
    grep -q "^$h	" "$new_manifest" || die "held-out photo $h is not among the fetched photos"
done

count=$(($(wc -l <"$new_manifest") - 1))
bytes=0
for pkg in "${PACKAGES[@]}"; do
    while IFS=$'\t' read -r name _; do
        bytes=$((bytes + $(stat -c %s "$DEST/$pkg/$name")))
    done <"$DEST/$pkg/.licences"
done

if [ "$UPDATE_MANIFEST" = 1 ] || [ ! -f "$MANIFEST" ]; then
    cp "$new_manifest" "$MANIFEST"
    log "wrote $MANIFEST"
elif ! diff -u "$MANIFEST" "$new_manifest" >&2; then
    die "fetched photos differ from $MANIFEST (see diff above; --update-manifest to accept)"
else
    log "manifest verified"
fi
log "$count photos ($(awk -F'\t' 'NR > 1 && $5 == 1' "$MANIFEST" | wc -l) held out), $((bytes / 1048576)) MiB in $DEST"
